"""The FLEXIP object under ComfyUI's model management, in this process as ComfyUI runs the nodes:
FlexIPLoader gives a ModelPatcher-managed module and keeps no copy of its own; the nodes load it
through load_models_gpu (it is then in current_loaded_models); unloading every model and dropping
the node outputs, as POST /free does, releases it; loaded again it gives the same tokens.

On this CPU-only host the compute device and the offload device are both the CPU, so a move
between them cannot be seen here: the tests check that the patcher has ComfyUI's two devices,
and where the module is after a load and after an unload."""
import gc
import weakref

import pytest
import torch

from flexip_core import COND, SD15
from flexip_core.reference import ReferenceFeatures
from flexip_core.weights import load_flexip

import random_models


@pytest.fixture
def loader(pack, monkeypatch):
    """FlexIPLoader with models/flexip pointed at the test host's model folder."""
    import folder_paths
    path = random_models.flexip_sd15()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "flexip", ([str(path.parent)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return lambda: pack.nodes.loader.FlexIPLoader().load(path.name)[0]


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    reference = ReferenceFeatures(torch.randn(1, SD15.clip.dim, generator=g),
                                  torch.randn(1, 256, SD15.dino.dim, generator=g))
    prompt = [[torch.randn(1, 77, SD15.text_dim, generator=g), {}]]
    return reference, prompt


def loaded(comfy, flexip):
    """Whether flexip's patcher is in ComfyUI's current_loaded_models."""
    return any(m.model is flexip.patcher for m in comfy.model_management.current_loaded_models)


def run_nodes(pack, sd15_model, flexip, reference, prompt):
    """P, S and the K/V GatedApply computes for one layer, through the three nodes."""
    nodes = pack.nodes
    (p,) = nodes.adapters.PreservationAdapter().apply(flexip, reference)
    (s,) = nodes.adapters.PersonalizationAdapter().apply(flexip, reference, prompt)
    (model,) = nodes.apply.GatedApply().apply(sd15_model[0], flexip, p, s, 0.5, 1.0, 0.0, 1.0)
    patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)]
    return p, s, patch.kv_p[COND] + patch.kv_s[COND]


def test_loader_gives_a_managed_module_on_comfys_devices_and_keeps_no_copy(comfy, loader):
    mm = comfy.model_management
    flexip = loader()
    assert flexip.patcher.model is flexip.module
    assert flexip.patcher.load_device == mm.get_torch_device()
    assert flexip.patcher.offload_device == mm.unet_offload_device()
    expected = load_flexip(random_models.flexip_sd15()).state_dict()
    assert expected.keys() == flexip.module.state_dict().keys()
    assert all(torch.equal(t, expected[k]) for k, t in flexip.module.state_dict().items())
    # The consumers' names reach the module's parts.
    assert (flexip.preservation, flexip.personalization, flexip.projections) == (
        flexip.module.preservation, flexip.module.personalization, flexip.module.projections)
    assert flexip.config is flexip.module.config and flexip.config.to_dict() == SD15.to_dict()
    # A second load builds a new module (ComfyUI's output cache is what keeps a loaded one), and
    # nothing in the pack holds the first one.
    module = weakref.ref(flexip.module)
    second = loader()
    assert second.module is not module()
    del flexip
    gc.collect()
    assert module() is None


def test_the_nodes_load_it_through_model_management_and_free_releases_it(comfy, pack, loader, sd15_model, inputs):
    mm = comfy.model_management
    reference, prompt = inputs
    flexip = loader()
    assert not loaded(comfy, flexip)
    p, s, kv = run_nodes(pack, sd15_model, flexip, reference, prompt)
    assert loaded(comfy, flexip)
    device = flexip.patcher.load_device
    assert flexip.patcher.current_loaded_device() == device
    assert flexip.patcher.loaded_size() == flexip.patcher.model_size() > 500 * 2**20  # loaded whole
    assert {t.device for t in flexip.module.state_dict().values()} == {device}

    # What the server does on POST /free {"unload_models": true, "free_memory": true}: unload every
    # model, then drop the node output cache (here: this test's references) and collect.
    mm.unload_all_models()
    assert not loaded(comfy, flexip)
    assert flexip.patcher.loaded_size() == 0
    assert flexip.patcher.current_loaded_device() == flexip.patcher.offload_device
    assert {t.device for t in flexip.module.state_dict().values()} == {flexip.patcher.offload_device}
    module, patcher = weakref.ref(flexip.module), weakref.ref(flexip.patcher)
    del flexip
    gc.collect()
    assert module() is None and patcher() is None
    assert all(m.model is not None for m in mm.current_loaded_models)

    # The next prompt loads the file again and gets the same tokens and K/V.
    flexip = loader()
    p2, s2, kv2 = run_nodes(pack, sd15_model, flexip, reference, prompt)
    assert loaded(comfy, flexip)
    for kind in p:
        assert torch.equal(p2[kind], p[kind]) and torch.equal(s2[kind], s[kind])
    assert all(torch.equal(a, b) for a, b in zip(kv2, kv))
