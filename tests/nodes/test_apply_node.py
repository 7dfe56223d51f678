"""GatedApply on ComfyUI's real SD1.5 UNet (the random full-shape checkpoint), in this process:
which layers it patches, how it wraps another pack's patch, start_at / end_at, and that one
UNet call fires each patch once."""
import copy
import dataclasses

import pytest
import torch

from flexip_core import COND, UNCOND
from flexip_core.config import SD15
from flexip_core.weights import load_flexip

import random_models


@pytest.fixture(scope="module")
def flexip():
    return load_flexip(random_models.flexip_sd15())


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    preservation = {COND: torch.randn(1, 20, 768, generator=g), UNCOND: torch.randn(1, 20, 768, generator=g)}
    personalization = {COND: torch.randn(1, 154, 768, generator=g), UNCOND: torch.randn(1, 77, 768, generator=g)}
    return preservation, personalization


def apply(pack, model, flexip, tokens, gamma=0.5, strength=1.0, start_at=0.0, end_at=1.0):
    (patched,) = pack.nodes.apply.GatedApply().apply(model, flexip, *tokens, gamma, strength, start_at, end_at)
    return patched


def attn2_patches(model):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def unet_call(model, cond_or_uncond=(0, 1), sigma=1.0):
    """One UNet forward as the sampler makes it: an 8 x 8 latent, one chunk per entry."""
    g = torch.Generator().manual_seed(1)
    n = len(cond_or_uncond)
    options = dict(model.model_options["transformer_options"], cond_or_uncond=list(cond_or_uncond),
                   sigmas=torch.full((n,), sigma))
    with torch.no_grad():
        return model.model.apply_model(torch.randn(n, 4, 8, 8, generator=g), torch.full((n,), sigma),
                                       c_crossattn=torch.randn(n, 77, 768, generator=g), transformer_options=options)


class ForeignPatch:
    """Another pack's attn2 replace patch, registered as ComfyUI_IPAdapter_plus does for SD1.5
    (two-part keys, the middle block as ('middle', 1)): plain attention plus a constant.
    ModelPatcher.clone() deep-copies patches, so the calls are counted on the class."""

    calls = []

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention
        self.calls.append(extra_options["block"])
        return optimized_attention(q, k, v, extra_options["n_heads"]) + 0.25


def test_patches_exactly_the_16_sd15_cross_attentions(pack, sd15_model, flexip, tokens):
    model, _ = sd15_model
    assert sorted(pack.nodes.apply.cross_attentions(model.model.diffusion_model)) == sorted(k for k, _ in SD15.layers)
    patched = apply(pack, model, flexip, tokens)
    assert sorted(attn2_patches(patched)) == sorted(k for k, _ in SD15.layers)
    assert "patches_replace" not in model.model_options.get("transformer_options", {}), "the input model was changed"


def test_one_unet_call_fires_each_patch_once(pack, sd15_model, flexip, tokens):
    model, _ = sd15_model
    patched = apply(pack, model, flexip, tokens)
    calls = []
    for key, patch in list(attn2_patches(patched).items()):
        patched.set_model_attn2_replace(lambda q, k, v, o, p=patch, key=key: calls.append(key) or p(q, k, v, o), *key)
    unet_call(patched)
    assert sorted(calls) == sorted(k for k, _ in SD15.layers)


def test_wraps_another_packs_patch(pack, sd15_model, flexip, tokens):
    model, _ = sd15_model
    foreign = ForeignPatch()
    foreign.calls.clear()
    other = model.clone()
    for key, _ in SD15.layers:
        block = ("middle", 1) if key[0] == "middle" else key[:2]
        other.set_model_attn2_replace(foreign, *block)
    unet_call(other)
    alone = len(foreign.calls)
    assert alone == 15  # its ('middle', 1) key never matches ComfyUI's ('middle', 0)

    foreign.calls.clear()
    both = apply(pack, other, flexip, tokens)
    unet_call(both)
    assert len(foreign.calls) == alone, "FlexIP dropped or duplicated the other pack's patch"
    layer = attn2_patches(both)[("input", 1, 0)]
    assert layer.wrapped is attn2_patches(both)[("input", 1)]
    cloned = both.clone()  # a later node's clone: the copy still wraps its own table's entry
    assert attn2_patches(cloned)[("input", 1, 0)].wrapped is attn2_patches(cloned)[("input", 1)]
    q, k, v = (torch.randn(2, 64, 320) for _ in range(3))
    options = {"n_heads": 8, "cond_or_uncond": [0, 1], "sigmas": torch.ones(2), "block": ("input", 1)}
    layer.strength = 0.0
    assert torch.allclose(layer(q, k, v, options), foreign(q, k, v, options))


def test_start_and_end_limit_the_sigmas_flexip_acts_on(pack, sd15_model, flexip, tokens):
    from comfy.ldm.modules.attention import optimized_attention
    model, _ = sd15_model
    patched = apply(pack, model, flexip, tokens, start_at=0.5, end_at=1.0)
    layer = attn2_patches(patched)[("input", 1, 0)]
    sampling = model.get_model_object("model_sampling")
    q, k, v = (torch.randn(2, 64, 320) for _ in range(3))
    base = optimized_attention(q, k, v, 8)
    early = {"n_heads": 8, "cond_or_uncond": [0, 1], "sigmas": torch.full((2,), sampling.percent_to_sigma(0.1))}
    late = dict(early, sigmas=torch.full((2,), sampling.percent_to_sigma(0.9)))
    assert torch.equal(layer(q, k, v, early), base)
    assert not torch.allclose(layer(q, k, v, late), base)


def test_kv_are_computed_once_and_weighted_once_per_batch_layout(pack, sd15_model, flexip, tokens):
    model, _ = sd15_model
    layer = attn2_patches(apply(pack, model, flexip, tokens))[("output", 11, 0)]
    projections = flexip.projections[("output", 11, 0)]
    assert torch.equal(layer.kv_p[COND][0], projections.to_k_p(tokens[0][COND]))
    assert layer.kv_s[COND][0].shape == (1, 154, 320) and layer.kv_s[UNCOND][0].shape == (1, 77, 320)
    q = torch.randn(2, 64, 320, dtype=torch.float16)
    options = {"n_heads": 8, "cond_or_uncond": [1, 0]}
    first = layer(q, q, q, options)
    terms = layer.terms[(q.device, q.dtype, (1, 0), 2)]
    assert terms[0][0][1].dtype == torch.float16 and len(terms[1]) == 2  # S: 154 vs 77 tokens, per chunk
    assert torch.equal(layer(q, q, q, options), first) and layer.terms[(q.device, q.dtype, (1, 0), 2)] is terms
    assert len(layer.terms) == 1
    clone = copy.deepcopy(layer)  # what ModelPatcher.clone() does to model_options
    assert clone.kv_p is layer.kv_p and clone.terms is layer.terms


def test_non_sd15_models_are_refused(pack, sd15_model, flexip, tokens):
    model, _ = sd15_model
    sdxl_like = dataclasses.replace(flexip.config, context_dim=2048)
    with pytest.raises(ValueError, match=r"GatedApply, input 'model': .*not the SD1.5 UNet"):
        pack.nodes.apply.check_base_model(model, sdxl_like)
