#!/usr/bin/env bash
# All tests: set up the pinned ComfyUI host if needed (venv, ComfyUI 0.3.75, Chromium), then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/flexip_core -k resampler
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/host.py
exec .host/venv/bin/python -m pytest "$@"
