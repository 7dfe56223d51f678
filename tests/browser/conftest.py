"""The browser tests run against two frontends: the one the pinned ComfyUI installs in the venv
(comfyui-frontend-package 1.32.9) and the newest release, which users install on their own
(host.NEWEST_FRONTEND, extracted by scripts/host.py and served with --front-end-root).

Only one ComfyUI runs at a time (each loads ~6 GB of models): for the newest frontend the
session's server stops, and starts again on the same port once this module's tests are done.
"""
import importlib.metadata

import pytest

import host

PINNED_FRONTEND = importlib.metadata.version("comfyui-frontend-package")


@pytest.fixture(scope="module", params=[PINNED_FRONTEND, host.NEWEST_FRONTEND], ids=lambda v: f"frontend-{v}")
def frontend_version(request):
    return request.param


@pytest.fixture(scope="module")
def ui_server(frontend_version, server, test_prompt):
    """The server that serves `frontend_version`. Every session fixture that needs the session's
    server (test_prompt uploads the reference image, into the input folder both servers share)
    is made before that server stops."""
    if frontend_version == PINNED_FRONTEND:
        yield server
        return
    from comfy_server import ComfyServer
    root = host.frontend_root(frontend_version)
    if not (root / "index.html").exists():
        pytest.fail(f"no frontend {frontend_version} at {root}: run `python3 scripts/host.py`")
    server.stop()
    try:
        with ComfyServer(front_end_root=root) as newest:
            yield newest
    finally:
        server.start()


@pytest.fixture(scope="module")
def ui_client(ui_server):
    return ui_server.client()
