"""GatedApply on ComfyUI's real SD1.5 UNet (the random full-shape checkpoint), in this process:
which layers it patches, what its patch computes (against the design note's formula in
float64), how it wraps another pack's patch, start_at / end_at, and that one UNet call fires
each patch once."""
import copy
import dataclasses

import pytest
import torch

from flexip_core import COND, UNCOND
from flexip_core.config import SD15
from flexip_core.weights import load_flexip

import random_models


@pytest.fixture(scope="module")
def flexip(pack):
    return pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15()))


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
    # The sampler adds the ModelPatcher's wrappers to the transformer options (FlexIP's finds other packs' patches).
    options = dict(model.model_options["transformer_options"], cond_or_uncond=list(cond_or_uncond),
                   sigmas=torch.full((n,), sigma), wrappers=model.wrappers)
    with torch.no_grad():
        return model.model.apply_model(torch.randn(n, 4, 8, 8, generator=g), torch.full((n,), sigma),
                                       c_crossattn=torch.randn(n, 77, 768, generator=g), transformer_options=options)


class ForeignPatch:
    """Another pack's attn2 replace patch, registered as ComfyUI_IPAdapter_plus does for SD1.5
    (two-part keys, the middle block as ('middle', 1)): plain attention plus a constant.
    ModelPatcher.clone() may copy patches (ComfyUI 0.3.75 deep-copies model_options), so the calls
    are counted on the class."""

    calls = []

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention
        self.calls.append(extra_options["block"])
        return optimized_attention(q, k, v, extra_options["n_heads"]) + 0.25


def test_patches_exactly_the_16_sd15_cross_attentions(pack, sd15_model, flexip, tokens):
    model, _ = sd15_model
    unet = model.model.diffusion_model
    assert sum(name.endswith(".attn2") for name, _ in unet.named_modules()) == 16
    assert all(unet_attn2(unet, key).to_k.out_features == inner for key, inner in SD15.layers)
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
    cloned = both.clone()  # a later node's clone (copied or shared patches): it wraps its own table's entry
    assert attn2_patches(cloned)[("input", 1, 0)].wrapped is attn2_patches(cloned)[("input", 1)]
    q, k, v = (torch.randn(2, 64, 320) for _ in range(3))
    options = {"n_heads": 8, "cond_or_uncond": [0, 1], "sigmas": torch.ones(2), "block": ("input", 1)}
    off = attn2_patches(apply(pack, other, flexip, tokens, strength=0.0))[("input", 1, 0)]
    assert torch.allclose(off(q, k, v, options), foreign(q, k, v, options))


def with_foreign(model, foreign, three_part_keys=False):
    other = model.clone()
    for key, _ in SD15.layers:
        other.set_model_attn2_replace(foreign, *(key if three_part_keys else ("middle", 1) if key[0] == "middle" else key[:2]))
    return other


@pytest.mark.parametrize("three_part_keys", [False, True])
def test_wraps_another_packs_patch_applied_after_flexip(pack, sd15_model, flexip, tokens, three_part_keys):
    """Applied after FlexIP, a two-part patch is shadowed by FlexIP's keys and a three-part one replaces
    FlexIP's; at call time FlexIP runs it in place of the layer's attention, as when it came first."""
    model, _ = sd15_model
    foreign = ForeignPatch()
    foreign.calls.clear()
    unet_call(with_foreign(model, foreign, three_part_keys))
    alone = len(foreign.calls)
    assert alone == (16 if three_part_keys else 15)

    foreign.calls.clear()
    flexip_first = with_foreign(apply(pack, model, flexip, tokens, gamma=0.2), foreign, three_part_keys)
    flexip_calls = []
    flexip_first.model_options["transformer_options"]["flexip_attn2"][("input", 1, 0)].on_call = (
        lambda key, chunks, gamma: flexip_calls.append(key))
    after = unet_call(flexip_first)
    assert len(foreign.calls) == alone, "the other pack's patch was shadowed or called twice"
    assert flexip_calls == [("input", 1, 0)], "FlexIP's patch was replaced"
    foreign.calls.clear()
    before = unet_call(apply(pack, with_foreign(model, foreign, three_part_keys), flexip, tokens, gamma=0.2))
    assert len(foreign.calls) == alone
    assert torch.equal(after, before)
    patch = attn2_patches(flexip_first)[("input", 1, 0)]
    assert (patch is foreign) if three_part_keys else (patch.wrapped is None), "the call changed the model's patch table"


# (start_at, end_at, [(percent of the sampling at which the layer is called, FlexIP acts there)])
WINDOWS = [
    (0.5, 1.0, [(0.1, False), (0.49, False), (0.9, True)]),
    (0.0, 0.5, [(0.0, True), (0.3, True), (0.51, False), (0.7, False)]),  # end_at < 1 stops it
    (0.2, 0.6, [(0.19, False), (0.2, True), (0.6, True), (0.61, False)]),  # both ends belong to the window
    (0.4, 0.4, [(0.39, False), (0.4, True), (0.41, False)]),  # start_at = end_at: that one sigma only
]


@pytest.mark.parametrize("start_at, end_at, calls", WINDOWS, ids=[f"{a}-{b}" for a, b, _ in WINDOWS])
def test_start_and_end_limit_the_sigmas_flexip_acts_on(pack, sd15_model, flexip, tokens, start_at, end_at, calls):
    """Inside [start_at, end_at] (sigmas from the model's own schedule, ends included, as ComfyUI's
    ControlNet and IPAdapter_plus count them) the patch gives what it gives without a window;
    outside it gives the layer's own attention."""
    from comfy.ldm.modules.attention import optimized_attention
    model, _ = sd15_model
    key = ("input", 1, 0)
    windowed = attn2_patches(apply(pack, model, flexip, tokens, 0.2, 1.0, start_at, end_at))[key]
    always = attn2_patches(apply(pack, model, flexip, tokens, 0.2))[key]
    sampling = model.get_model_object("model_sampling")
    q, k, v = (torch.randn(2, 64, 320, generator=torch.Generator().manual_seed(i)) for i in range(3))
    base = optimized_attention(q, k, v, 8)
    for percent, acts in calls:
        # The first step runs at the schedule's sigma_max (percent_to_sigma(0) is a 1e9 sentinel).
        sigma = sampling.sigma_max.item() if percent == 0 else sampling.percent_to_sigma(percent)
        options = {"n_heads": 8, "cond_or_uncond": [0, 1], "sigmas": torch.full((2,), sigma)}
        flexip_on = always(q, k, v, options)
        assert not torch.allclose(flexip_on, base, atol=1e-3)
        torch.testing.assert_close(windowed(q, k, v, options), flexip_on if acts else base,
                                   msg=lambda m: f"at {percent} of the sampling FlexIP should {'' if acts else 'not '}act: {m}")


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
    clone = copy.deepcopy(layer)  # what ComfyUI 0.3.75's ModelPatcher.clone() does to model_options
    assert clone.kv_p is layer.kv_p and clone.terms is layer.terms


def test_non_sd15_models_are_refused(pack, sd15_model, flexip, tokens):
    model, _ = sd15_model
    sdxl_like = dataclasses.replace(flexip.config, context_dim=2048)
    with pytest.raises(ValueError, match=r"GatedApply, input 'model': .*is not the (SD1.5 )?UNet.*Fix: load an SD1.5 checkpoint"):
        pack.nodes.apply.check_base_model(model, sdxl_like)


# --- What the patch computes: the design note's formula in float64, from the module's weights. ---

def unet_attn2(diffusion_model, key):
    """The attn2 module ComfyUI patches under `key`, found by SD1.5's block layout
    (each block: a ResBlock, then the SpatialTransformer)."""
    block, index, t = key
    blocks = diffusion_model.middle_block if block == "middle" else getattr(diffusion_model, f"{block}_blocks")[index]
    return blocks[1].transformer_blocks[t].attn2


def attention64(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out, in float64; k / v may have batch 1."""
    q, k, v = (t.double().unflatten(-1, (heads, -1)).transpose(-3, -2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(-3, -2).flatten(-2)


def design_formula(q, k, v, heads, chunks, preservation, personalization, weights, gamma, strength):
    """out = Attn(q, K_text, V_text) + w * (gamma * Attn(q, Wk_P P, Wv_P P) + (1 - gamma) * Attn(q, Wk_S S, Wv_S S))
    for each CFG chunk with that chunk's (COND or UNCOND) P and S. weights: {name: float64 W}."""
    out = []
    for q_c, k_c, v_c, kind in zip(q.chunk(len(chunks)), k.chunk(len(chunks)), v.chunk(len(chunks)), chunks):
        p, s = preservation[kind].double(), personalization[kind].double()
        text = attention64(q_c, k_c, v_c, heads)
        branch_p = attention64(q_c, p @ weights["to_k_p"].T, p @ weights["to_v_p"].T, heads)
        branch_s = attention64(q_c, s @ weights["to_k_s"].T, s @ weights["to_v_s"].T, heads)
        out.append(text + strength * (gamma * branch_p + (1 - gamma) * branch_s))
    return torch.cat(out)


@pytest.fixture(scope="module")
def adapter_tokens(pack, flexip):
    """prompt length -> (P, S) as the adapter nodes make them from one random reference, a prompt of
    that many tokens and a different 77-token negative."""
    from flexip_core.reference import ReferenceFeatures
    made = {}

    def make(prompt_tokens):
        if prompt_tokens not in made:
            g = torch.Generator().manual_seed(prompt_tokens)
            reference = ReferenceFeatures(torch.randn(1, SD15.clip.dim, generator=g),
                                          torch.randn(1, 256, SD15.dino.dim, generator=g))
            positive = [[torch.randn(1, prompt_tokens, 768, generator=g), {}]]
            negative = [[torch.randn(1, 77, 768, generator=g), {}]]
            (p,) = pack.nodes.adapters.PreservationAdapter().apply(flexip, reference)
            (s,) = pack.nodes.adapters.PersonalizationAdapter().apply(flexip, reference, positive, negative)
            made[prompt_tokens] = p, s
        return made[prompt_tokens]
    return make


@pytest.mark.parametrize("key, prompt_tokens, chunks, rows", [
    (("input", 1, 0), 154, (UNCOND, COND), 2),   # S 154 against 77 tokens: one attention per chunk
    (("middle", 0, 0), 77, (COND, UNCOND), 1),   # equal lengths: the chunks stacked in one call
    (("output", 7, 0), 77, (UNCOND, COND), 2),
    (("output", 11, 0), 154, (UNCOND,), 1),      # a batch of the uncond pass alone
])
def test_patch_is_the_design_formula_with_gamma_and_each_branch_in_its_place(
        pack, sd15_model, flexip, adapter_tokens, key, prompt_tokens, chunks, rows):
    """GatedApply's patch on a real SD1.5 layer, called as ComfyUI calls it, against the formula in
    float64 from the FlexIP file's projection weights and the adapter nodes' P and S; gamma 0.2
    and strength 0.7, so 1 - gamma, a swapped branch, a lost strength or the wrong chunk's tokens
    all change the numbers."""
    gamma, strength = 0.2, 0.7
    model, _ = sd15_model
    preservation, personalization = adapter_tokens(prompt_tokens)
    patch = attn2_patches(apply(pack, model, flexip, (preservation, personalization), gamma, strength))[key]
    attn2 = unet_attn2(model.model.diffusion_model, key)
    g = torch.Generator().manual_seed(7)
    batch = rows * len(chunks)
    hidden = torch.randn(batch, 64, attn2.to_q.in_features, generator=g)
    text = torch.randn(batch, 77, 768, generator=g)
    with torch.no_grad():
        q, k, v = (to(x.to(to.weight.dtype)) for to, x in ((attn2.to_q, hidden), (attn2.to_k, text), (attn2.to_v, text)))
        out = patch(q, k, v, {"cond_or_uncond": list(chunks), "sigmas": torch.full((batch,), 5.0),
                              "block": key[:2], "block_index": key[2], "n_heads": attn2.heads,
                              "dim_head": q.shape[-1] // attn2.heads, "attn_precision": attn2.attn_precision})

    projections = flexip.projections[key]
    weights = {name: getattr(projections, name).weight.double() for name in ("to_k_p", "to_v_p", "to_k_s", "to_v_s")}
    expected = design_formula(q, k, v, attn2.heads, chunks, preservation, personalization, weights, gamma, strength)
    tolerance = 1e-5 * expected.abs().max().item()
    error = (out.double() - expected).abs().max().item()
    assert out.shape == q.shape and error < tolerance, f"off the design formula by {error:.3g}"

    # The check can tell the wrong wirings apart: each is off by far more than the tolerance.
    swapped = {"to_k_p": weights["to_k_s"], "to_v_p": weights["to_v_s"],
               "to_k_s": weights["to_k_p"], "to_v_s": weights["to_v_p"]}
    other_chunks = tuple(COND + UNCOND - c for c in chunks)
    for name, wrong in (
            ("1 - gamma", design_formula(q, k, v, attn2.heads, chunks, preservation, personalization, weights,
                                         1 - gamma, strength)),
            ("swapped projections", design_formula(q, k, v, attn2.heads, chunks, preservation, personalization,
                                                   swapped, gamma, strength)),
            ("P and S swapped", design_formula(q, k, v, attn2.heads, chunks, personalization, preservation,
                                               weights, gamma, strength)),
            ("the other pass's tokens", design_formula(q, k, v, attn2.heads, other_chunks, preservation,
                                                       personalization, weights, gamma, strength)),
            ("strength 1", design_formula(q, k, v, attn2.heads, chunks, preservation, personalization, weights,
                                          gamma, 1.0))):
        assert (wrong - expected).abs().max().item() > 100 * tolerance, name
