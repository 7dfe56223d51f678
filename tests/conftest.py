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
