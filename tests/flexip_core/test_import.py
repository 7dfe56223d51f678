"""flexip_core is plain PyTorch: importing it must not import ComfyUI.

A stub `comfy` package is put on the child's path, so an import of comfy would succeed and show
up in sys.modules even where ComfyUI is not installed (the check can fail anywhere)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, json, pkgutil, sys
assert importlib.util.find_spec("comfy") is not None, "stub comfy not importable: the check could not fail"
{prelude}
import flexip_core
{extra}
print(json.dumps({{
    "file": flexip_core.__file__,
    "comfy": sorted(m for m in sys.modules if m == "comfy" or m.startswith("comfy.")
                    or m.startswith("comfy_") or m == "folder_paths"),
}}))
"""

IMPORT_ALL = r"""
for info in pkgutil.iter_modules(flexip_core.__path__):
    importlib.import_module("flexip_core." + info.name)
"""


@pytest.fixture
def stub_comfy(tmp_path):
    package = tmp_path / "comfy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model_management.py").write_text("")
    (tmp_path / "folder_paths.py").write_text("")
    return tmp_path


def probe(stub_dir, prelude="", extra=""):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub_dir), env.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(prelude=prelude, extra=extra)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_flexip_core_leaves_comfy_out(stub_comfy):
    found = probe(stub_comfy)
    assert Path(found["file"]).resolve().parent == REPO_ROOT / "flexip_core"  # the repo's package
    assert found["comfy"] == []


def test_no_flexip_core_submodule_imports_comfy(stub_comfy):
    found = probe(stub_comfy, extra=IMPORT_ALL)
    assert found["comfy"] == []


def test_probe_detects_a_comfy_import(stub_comfy):
    """Control: the same probe does see comfy when something imports it."""
    found = probe(stub_comfy, prelude="import comfy.model_management")
    assert found["comfy"] == ["comfy", "comfy.model_management"]
