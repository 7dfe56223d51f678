#!/usr/bin/env bash
# All tests, on every test host: build each host if needed (scripts/host.py: venv, ComfyUI, Chromium),
# then pytest in it. Every test that needs ComfyUI runs on each host; tests that need none run on the
# first host only, and the two heaviest (full-shape SD1.5 training, the miniature's CI run) and the browser
# tests with the newest frontend on 0.33.0 only (tests/conftest.py: ONE_HOST, to keep CI under 45 min).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/nodes -k gamma
# One host only: FLEXIP_HOSTS=0.33.0 scripts/test.sh tests/nodes
#
# Host 0.33.0 is built from ../shared/hosts, or FLEXIP_COMFYUI_SOURCE, or upstream's git tag: where none
# can be had (and FLEXIP_HOSTS does not name it), it is reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
failed=()
skipped=()
built=()
for name in ${FLEXIP_HOSTS:-0.3.75 0.33.0}; do
    echo "=== test host $name: build ==="
    if python3 scripts/host.py --host "$name"; then
        built+=("$name")
    elif [ "$name" = "0.3.75" ] || [ -n "${FLEXIP_HOSTS:-}" ]; then
        failed+=("$name (host build)")
    else
        echo "=== test host $name could not be built (no ../shared/hosts tarball, FLEXIP_COMFYUI_SOURCE or network): skipped ==="
        skipped+=("$name")
    fi
done
export FLEXIP_HOSTS_IN_RUN="${built[*]}"

# pytest on each host of the run, one after the other, whatever the one before gave.
# Exit 5: every selected test runs on another host.
for name in ${built[@]+"${built[@]}"}; do
    echo "=== test host $name ==="
    python=$(FLEXIP_HOST="$name" python3 scripts/host.py --print | sed -n 's/^python=//p')
    rc=0
    # The slowest tests per host, to budget CI's 45 min (docs/compatibility.md).
    FLEXIP_HOST="$name" "$python" -m pytest --durations=25 "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then failed+=("$name (pytest exit $rc)"); fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "=== FAILED on test host $(printf '%s; ' "${failed[@]}" | sed 's/; $//') ==="
    exit 1
fi
echo "=== passed on test hosts ${built[*]}${skipped:+ (skipped: ${skipped[*]})} ==="
