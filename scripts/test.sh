#!/usr/bin/env bash
# All tests, on every test host: build each host if needed (scripts/host.py: venv, ComfyUI, Chromium),
# then pytest in it. Every test that needs ComfyUI runs on each host; tests that need none run on the
# first host only, and the two heaviest (full-shape SD1.5 training, the miniature's CI run) on 0.33.0 only
# (tests/conftest.py: ONE_HOST, to keep CI under 45 min).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/nodes -k gamma
# One host only: FLEXIP_HOSTS=0.33.0 scripts/test.sh tests/nodes
#
# Without extra arguments (the whole suite, as CI runs it) the tests run in two lanes side by side
# (tests/conftest.py: FLEXIP_LANE): the side lane takes the tests that start no ComfyUI server (the ones
# that need no ComfyUI, and the miniature's CI run: one CPU core each, little memory) while the main lane
# runs the rest, one server at a time. The side lane's output follows the main lane's.
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

# pytest on each host of the run, one after the other; LANE (main, side or empty: both) selects the tests.
# Failures go to the file $2, one per line. Exit 5: every selected test runs on another host or lane.
run_hosts() {
    local lane=$1 failures=$2 name python rc
    shift 2
    for name in "$@"; do
        echo "=== test host $name${lane:+, $lane lane} ==="
        python=$(FLEXIP_HOST="$name" python3 scripts/host.py --print | sed -n 's/^python=//p')
        rc=0
        # The slowest tests per host, to budget CI's 45 min (docs/compatibility.md).
        FLEXIP_HOST="$name" FLEXIP_LANE="$lane" "$python" -m pytest --durations=25 ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"} || rc=$?
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then echo "$name${lane:+, $lane lane} (pytest exit $rc)" >> "$failures"; fi
    done
}

failures=$(mktemp)
PYTEST_ARGS=("$@")
if [ ${#built[@]} -gt 0 ]; then
    if [ $# -eq 0 ]; then
        side_log=$(mktemp)
        # the newest host first: the miniature's CI run, the side lane's longest, is there
        reversed=()
        for name in "${built[@]}"; do reversed=("$name" ${reversed[@]+"${reversed[@]}"}); done
        run_hosts side "$failures" "${reversed[@]}" > "$side_log" 2>&1 &
        side=$!
        run_hosts main "$failures" "${built[@]}"
        wait "$side" || true
        echo "=== side lane (ran beside the main lane) ==="
        cat "$side_log"
        rm -f "$side_log"
    else
        run_hosts "" "$failures" "${built[@]}"
    fi
fi
while IFS= read -r line; do failed+=("$line"); done < "$failures"
rm -f "$failures"
if [ ${#failed[@]} -gt 0 ]; then
    echo "=== FAILED on test host $(printf '%s; ' "${failed[@]}" | sed 's/; $//') ==="
    exit 1
fi
echo "=== passed on test hosts ${built[*]}${skipped:+ (skipped: ${skipped[*]})} ==="
