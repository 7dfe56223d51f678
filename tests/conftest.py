"""Shared fixtures. The test host (ComfyUI 0.3.75 and its venv) comes from scripts/host.py."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMFYUI = REPO / ".host" / "ComfyUI"


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's `comfy` package, imported in this process on the CPU."""
    if not (COMFYUI / "comfy").is_dir():
        pytest.fail(f"no ComfyUI at {COMFYUI}: run `python3 scripts/host.py` (the README's test command does)")
    sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.clip_vision
    import comfy.model_management
    return comfy
