"""Shared fixtures, and which tests run on which test host.

The test hosts (a ComfyUI and its venv each) come from scripts/host.py; FLEXIP_HOST selects the one
this session runs on (default 0.3.75), and the session must run in that host's venv. scripts/test.sh
runs the suite once per host and sets FLEXIP_HOSTS_IN_RUN to all the hosts of the run; then:
- tests that need no ComfyUI (tests/flexip_core and tests/scripts without the `comfy` fixture) run
  on the run's first host only;
- each of ONE_HOST's files runs on its host if that host is in the run, else on the run's first host;
- the browser tests with the newest frontend (host.NEWEST_FRONTEND; each host's own frontend runs on
  that host) run on the newer host likewise.
Without FLEXIP_HOSTS_IN_RUN (a plain pytest call) every collected test runs.
A failure names its host: in its report and in the summary at the end.
"""
import os
import sys
from pathlib import Path

import pytest

import host

REPO = Path(__file__).resolve().parent.parent
COMFYUI = host.COMFYUI
HOSTS_IN_RUN = os.environ.get("FLEXIP_HOSTS_IN_RUN", "").split()
# Tests that need no ComfyUI: the run's first host runs them.
PURE_FOLDERS = ("tests/flexip_core/", "tests/scripts/")
# The two heaviest test files (full-shape SD1.5 training through ComfyUI's UNet, the miniature's CI run) run
# on one host, the newer, to keep CI under 45 min (docs/compatibility.md gives the budget).
NEWER_HOST = "0.33.0"
ONE_HOST = {"tests/flexip_train/test_train_sd15.py": NEWER_HOST, "tests/benchmarks/nano/test_run.py": NEWER_HOST}
# The same newest frontend on both servers is the costliest repeat left (a server restart and half of the
# browser tests per host): it runs against the newer server, where users install it.
NEWEST_FRONTEND_HOST = NEWER_HOST


def host_label():
    version = host.SELECTED.version() if (COMFYUI / "comfyui_version.py").exists() else "not built"
    return f"host {host.SELECTED.name} (ComfyUI {version} at {COMFYUI}, python {sys.executable})"


def import_comfy():
    if not (COMFYUI / "comfy").is_dir():
        pytest.fail(f"no ComfyUI at {COMFYUI}: run `python3 scripts/host.py --host {host.SELECTED.name}` "
                    "(the README's test command does)")
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.clip_vision
    import comfy.model_management
    return comfy


def comfy_from_another_tree():
    """A module of ComfyUI's `comfy` package this process imported from outside the selected host's ComfyUI.
    (`comfy` is a namespace package: each submodule is looked up along sys.path when first imported.)"""
    root = COMFYUI.resolve()
    for name, module in list(sys.modules.items()):
        if name.startswith("comfy.") and getattr(module, "__file__", None):
            origin = Path(module.__file__).resolve()
            if not origin.is_relative_to(root):
                return origin
    return None


def pytest_configure(config):
    if Path(sys.prefix).resolve() != host.VENV.resolve():
        raise pytest.UsageError(f"FLEXIP_HOST={host.SELECTED.name} runs in {host.VENV}, not {sys.prefix}: "
                                f"run {host.PYTHON} -m pytest (scripts/test.sh does)")
    # This host's ComfyUI first on sys.path and, on another host, host 0.3.75's last: benchmarks/nano/base.py
    # puts host 0.3.75's on sys.path only when it is missing, so this order stays and `comfy`'s modules
    # come from this host.
    sys.path.insert(0, str(COMFYUI))
    if host.SELECTED.name != host.PINNED:
        sys.path.append(str(host.HOSTS[host.PINNED].comfyui))


@pytest.fixture(scope="module", autouse=True)
def miniature_subprocesses_on_this_host(request):
    """The miniature's processes that its tests start (`python -m benchmarks.nano`) get this session's sys.path
    order, so they import `comfy` from this host too: benchmarks/nano/base.py would otherwise put host 0.3.75's
    ComfyUI first. Only there: a ComfyUI server started with the other tree on its path could mix the two."""
    path = Path(request.path).resolve()
    if host.SELECTED.name == host.PINNED or not path.is_relative_to(REPO / "tests" / "benchmarks" / "nano"):
        yield
        return
    order = [str(COMFYUI), *os.environ.get("PYTHONPATH", "").split(os.pathsep), str(host.HOSTS[host.PINNED].comfyui)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, order)))
        yield


def pytest_report_header(config):
    return [f"FlexIP test {host_label()}" + (f"; hosts in this run: {' '.join(HOSTS_IN_RUN)}" if HOSTS_IN_RUN else "")]


def needs_comfyui(item):
    path = Path(item.fspath).resolve().relative_to(REPO).as_posix()
    return "comfy" in getattr(item, "fixturenames", ()) or not path.startswith(PURE_FOLDERS)


def runs_here(item):
    this = host.SELECTED.name
    path = Path(item.fspath).resolve().relative_to(REPO).as_posix()
    if not HOSTS_IN_RUN:
        return True
    first = HOSTS_IN_RUN[0]
    if path in ONE_HOST:
        return this == (ONE_HOST[path] if ONE_HOST[path] in HOSTS_IN_RUN else first)
    if getattr(item, "callspec", None) is not None and item.callspec.params.get("frontend_version") == host.NEWEST_FRONTEND:
        return this == (NEWEST_FRONTEND_HOST if NEWEST_FRONTEND_HOST in HOSTS_IN_RUN else first)
    return this == first or needs_comfyui(item)


def pytest_collection_modifyitems(config, items):
    if HOSTS_IN_RUN and host.SELECTED.name not in HOSTS_IN_RUN:
        raise pytest.UsageError(f"FLEXIP_HOST={host.SELECTED.name} is not in FLEXIP_HOSTS_IN_RUN={HOSTS_IN_RUN}")
    other_host = [item for item in items if not runs_here(item)]
    if other_host:
        config.hook.pytest_deselected(items=other_host)
        items[:] = [item for item in items if runs_here(item)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    stray = comfy_from_another_tree()
    if stray is not None and report.when == "teardown" and report.passed:
        report.outcome = "failed"
        report.longrepr = f"a `comfy` module was imported from {stray}, not from the selected {host_label()}"
    if report.failed:
        report.sections.append(("FlexIP test host", host_label()))


def pytest_terminal_summary(terminalreporter):
    failed = [r.nodeid for key in ("failed", "error") for r in terminalreporter.stats.get(key, [])
              if getattr(r, "nodeid", None)]
    if failed:
        terminalreporter.write_sep("=", f"{len(failed)} failed on {host_label()}", red=True)
        for nodeid in dict.fromkeys(failed):
            terminalreporter.write_line(f"FAILED on host {host.SELECTED.name}: {nodeid}")


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's `comfy` package of the selected host, imported in this process on the CPU."""
    return import_comfy()


# --- The real host: one ComfyUI server per test session, shared by every test that needs it. ---

TEST_LATENT = 64   # pixels: an 8 x 8 latent keeps a full-shape SD1.5 run to seconds on a CPU
TEST_STEPS = 2


@pytest.fixture(scope="session")
def model_files(comfy):
    """Full-shape random model files (cached in .host/models), by their names in ComfyUI."""
    import random_models
    return {"checkpoint": random_models.sd15_checkpoint().name,
            "clip_vision": random_models.clip_vit_h().name,
            "dino": random_models.dinov2_large().name,
            "flexip": random_models.flexip_sd15().name}


@pytest.fixture(scope="session")
def server(model_files):
    """The pinned ComfyUI on 127.0.0.1 with this pack and tests/host/test_only_nodes in
    custom_nodes, logging at DEBUG (the FlexIP patches log each call there)."""
    from comfy_server import ComfyServer
    test_nodes = COMFYUI / "custom_nodes" / "flexip_test_only_nodes"
    if not test_nodes.is_symlink():
        test_nodes.symlink_to(REPO / "tests" / "host" / "test_only_nodes", target_is_directory=True)
    try:
        srv = ComfyServer(verbose=True).start()
        yield srv
        srv.stop()
    finally:
        test_nodes.unlink()  # the demo and a user's server on this host must not see it


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture(scope="session")
def reference_image(client, tmp_path_factory):
    """A textured, non-square reference image uploaded to the server; its LoadImage name."""
    import numpy as np
    from PIL import Image
    rng = np.random.RandomState(0)
    pixels = (rng.rand(120, 96, 3) * 255).astype("uint8")
    path = tmp_path_factory.mktemp("reference") / "flexip_test_reference.png"
    Image.fromarray(pixels).save(path)
    return client.upload_image(path)


def load_api_workflow(name):
    import json
    return json.loads((REPO / "example_workflows" / "api" / name).read_text())


@pytest.fixture(scope="session")
def test_prompt(model_files, reference_image):
    """make(name, **overrides) -> the shipped API workflow `name`, pointed at the test model files,
    at a small latent and few steps."""
    import flexip_client

    def make(name="flexip_basic_api.json", gamma=None, seed=1):
        return flexip_client.override(load_api_workflow(name), image=reference_image, gamma=gamma, seed=seed,
                                      models=model_files, size=TEST_LATENT, steps=TEST_STEPS)
    return make


@pytest.fixture(scope="session")
def pack(comfy):
    """This repository imported as ComfyUI imports a custom node pack (a package of its own)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("comfyui_flexip", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_flexip"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sd15_model(comfy, model_files):
    """The random full-shape SD1.5 checkpoint loaded by ComfyUI in this process: (MODEL, CLIP)."""
    import comfy.sd
    import random_models
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(random_models.sd15_checkpoint()))
    return model, clip
