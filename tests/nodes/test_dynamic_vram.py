"""FlexIP under ComfyUI's dynamic VRAM loading, as far as a CPU can show it.

On an NVIDIA GPU with comfy-aimdo, ComfyUI 0.33.0's main.py sets comfy.model_patcher.CoreModelPatcher
to ModelPatcherDynamic. That patcher streams comfy.ops layers (their weights stay off the compute
device and are cast inside each forward), loads every other parameter whole, and its load() refuses
full_load. It cannot be built on a CPU (its host buffers need aimdo's CUDA library; for a CPU load
device its __new__ gives the legacy ModelPatcher), so the tests check what decides correctness:
- FlexIP's module is managed by the legacy ModelPatcher, which ManagedFlexIP.load's full load needs
  (its plain torch layers have nothing to stream), whatever CoreModelPatcher is;
- the reference encoder reads the CLIP and DINOv2 layers only through their forward: with every
  comfy.ops layer's weights kept in another dtype and cast inside forward, as streaming leaves them,
  it gives exactly the features it gives with the weights loaded.
"""
import pytest
import torch

import random_models


def test_flexip_keeps_the_legacy_patcher_when_comfyui_swaps_in_the_dynamic_one(comfy, pack, monkeypatch):
    import comfy.model_management
    import comfy.model_patcher
    from flexip_core.weights import load_flexip
    dynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    if dynamic is not None:  # what main.py does when aimdo initialises
        monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", dynamic)
    # A GPU load device: the dynamic patcher would not hand a CPU device back to the legacy one.
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(comfy.model_management, "get_torch_device", lambda: gpu)
    flexip = pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15()))
    assert type(flexip.patcher) is comfy.model_patcher.ModelPatcher
    assert flexip.patcher.load_device == gpu
    assert not getattr(flexip.patcher, "is_dynamic", lambda: False)()


def comfy_ops_layers(model):
    return [m for m in model.modules() if hasattr(m, "comfy_cast_weights")]


def stream_like(clip_vision):
    """Every comfy.ops layer's weight and bias in float16, cast inside its forward: where dynamic loading
    leaves them (another device there, another dtype here). The random files are float16-exact."""
    layers = comfy_ops_layers(clip_vision.model)
    for layer in layers:
        layer.comfy_cast_weights = True
        for name in ("weight", "bias"):
            if getattr(layer, name, None) is not None:
                setattr(layer, name, torch.nn.Parameter(getattr(layer, name).detach().half(), requires_grad=False))
    return len(layers)


def test_the_reference_encoder_reads_the_encoders_only_through_their_layers(comfy, pack):
    import comfy.clip_vision
    from flexip_core.weights import load_flexip
    flexip = pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15()))
    clip_vision = comfy.clip_vision.load(str(random_models.clip_vit_h()))
    dino = comfy.clip_vision.load(str(random_models.dinov2_large()))
    image = torch.rand(1, 120, 96, 3, generator=torch.Generator().manual_seed(4))
    encode = pack.nodes.reference.ReferenceEncoder().encode
    with torch.inference_mode():
        (loaded,) = encode(flexip, image, clip_vision, dino, "center", "average")
        assert stream_like(clip_vision) > 100 and stream_like(dino) > 100
        assert {p.dtype for m in (clip_vision.model, dino.model) for layer in comfy_ops_layers(m)
                for p in layer.parameters(recurse=False)} == {torch.float16}
        (streamed,) = encode(flexip, image, clip_vision, dino, "center", "average")
    for what, a, b in (("CLIP embeds", loaded.clip_embeds, streamed.clip_embeds),
                       ("DINOv2 patches", loaded.dino_patches, streamed.dino_patches)):
        error = (a - b).abs().max().item()
        assert error <= 1e-6 * a.abs().max().item(), f"{what} differ by {error:.3g} with the layers cast in forward"


def test_the_ram_pressure_cache_counts_flexip_as_a_model(comfy, pack):
    """ComfyUI 0.33.0's default output cache (RAM pressure) evicts old workflows' models first: outputs that are
    a ModelPatcher or hold one as .patcher, as CLIP_VISION does and FLEXIP does."""
    import comfy.model_patcher
    from flexip_core.weights import load_flexip
    recognises = getattr(comfy.model_patcher, "is_model_patcher_output", None)
    if recognises is None:
        pytest.skip("this ComfyUI has no RAM-pressure cache that looks for models")
    assert recognises(pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15())))
