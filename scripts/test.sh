#!/usr/bin/env bash
# All tests, on every test host: build each host if needed (scripts/host.py: venv, ComfyUI, Chromium),
# then pytest in it. Tests that need no ComfyUI run on the first host only (tests/conftest.py).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/nodes -k gamma
# One host only: FLEXIP_HOSTS=0.33.0 scripts/test.sh tests/nodes
set -euo pipefail
cd "$(dirname "$0")/.."
export FLEXIP_HOSTS_IN_RUN="${FLEXIP_HOSTS:-0.3.75 0.33.0}"
failed=()
for name in $FLEXIP_HOSTS_IN_RUN; do
    echo "=== test host $name ==="
    python3 scripts/host.py --host "$name"
    python=$(FLEXIP_HOST="$name" python3 scripts/host.py --print | sed -n 's/^python=//p')
    # Every host runs, whatever the one before gave. Exit 5: every selected test runs on another host.
    rc=0
    FLEXIP_HOST="$name" "$python" -m pytest "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then failed+=("$name (pytest exit $rc)"); fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "=== FAILED on test host ${failed[*]} ==="
    exit 1
fi
echo "=== passed on test hosts $FLEXIP_HOSTS_IN_RUN ==="
