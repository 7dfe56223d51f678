#!/usr/bin/env bash
# The main job: set up the pinned ComfyUI host if needed, then run the FlexIP gamma sweep through
# its HTTP API and write a labelled contact sheet (see scripts/demo.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/host.py
exec .host/venv/bin/python scripts/demo.py "$@"
