"""An attention override (what SageAttention / FlashAttention patcher nodes set, with
ModelPatcher.set_model_optimized_attention where the host has it) runs the text attention and both
FlexIP branches of all 16 patched layers, and with an exact attention as the override the patch is
still the design formula in float64."""
from collections import Counter

import pytest
import torch

from flexip_core import COND, UNCOND
from flexip_core.config import SD15

from tests.nodes.test_apply_node import (adapter_tokens, apply, attention64, attn2_patches, design_formula,  # noqa: F401
                                         flexip, unet_attn2, unet_call)

TEXT, P_TOKENS, S_TOKENS = 77, 20, 231  # token counts that tell the three attentions of a layer apart


def set_attention_override(model, attention):
    """Registers attention(q, k, v, heads, **options) as the model's attention override."""
    if hasattr(model, "set_model_optimized_attention"):
        model.set_model_optimized_attention(attention)
    else:  # hosts without the setter: the entry their wrap_attn reads, with its (func, *args) signature
        model.model_options["transformer_options"]["optimized_attention_override"] = (
            lambda func, *args, **kwargs: attention(*args, **kwargs))


class ExactAttention:
    """softmax attention in float64 times `scale`, recording (block, block_index, key tokens) per call."""

    def __init__(self, scale=1.0):
        self.scale, self.calls = scale, []

    def __call__(self, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, transformer_options=None,
                 **kwargs):
        assert mask is None and not skip_reshape
        options = transformer_options or {}
        self.calls.append((options.get("block"), options.get("block_index"), k.shape[1]))
        return (attention64(q, k, v, heads) * self.scale).to(q.dtype)

    def cross_attention_calls(self):
        """{key tokens: Counter of the layers called with them}; self-attention (as many keys as queries:
        64, 16, 4 or 1 at an 8 x 8 latent) left out."""
        layers = {}
        for block, index, tokens in self.calls:
            if tokens in (TEXT, P_TOKENS, S_TOKENS):
                layers.setdefault(tokens, Counter())[(*block, index)] += 1
        return layers


@pytest.fixture(scope="module")
def distinct_tokens():
    g = torch.Generator().manual_seed(3)
    preservation = {kind: torch.randn(1, P_TOKENS, 768, generator=g) for kind in (COND, UNCOND)}
    personalization = {kind: torch.randn(1, S_TOKENS, 768, generator=g) for kind in (COND, UNCOND)}
    return preservation, personalization


def test_the_override_sees_every_cross_attention_of_the_plain_model(sd15_model):
    model, _ = sd15_model
    plain = model.clone()
    override = ExactAttention()
    set_attention_override(plain, override)
    unet_call(plain)
    assert override.cross_attention_calls() == {TEXT: Counter({key: 1 for key, _ in SD15.layers})}


@pytest.mark.parametrize("override_first", [True, False], ids=["override-then-flexip", "flexip-then-override"])
def test_the_override_runs_the_text_attention_and_both_branches_of_all_16_layers(
        pack, sd15_model, flexip, distinct_tokens, override_first):
    model, _ = sd15_model
    override = ExactAttention()
    if override_first:
        with_override = model.clone()
        set_attention_override(with_override, override)
        patched = apply(pack, with_override, flexip, distinct_tokens, gamma=0.2)
    else:
        patched = apply(pack, model, flexip, distinct_tokens, gamma=0.2)
        set_attention_override(patched, override)
    unet_call(patched)
    every_layer_once = Counter({key: 1 for key, _ in SD15.layers})
    assert override.cross_attention_calls() == {TEXT: every_layer_once, P_TOKENS: every_layer_once,
                                                S_TOKENS: every_layer_once}


@pytest.mark.parametrize("scale", [1.0, 1.5], ids=["exact", "exact-x1.5"])
def test_with_an_exact_override_the_patch_is_the_design_formula(pack, sd15_model, flexip, adapter_tokens, scale):
    """Through an exact float64 attention the patch gives the formula (gamma 0.2, strength 0.7) to float64
    rounding; through 1.5 x that attention it gives 1.5 x the formula, so every term went through it."""
    gamma, strength, key, chunks = 0.2, 0.7, ("output", 4, 0), (UNCOND, COND)
    model, _ = sd15_model
    preservation, personalization = adapter_tokens(154)
    patched = apply(pack, model, flexip, (preservation, personalization), gamma, strength)
    set_attention_override(patched, ExactAttention(scale))
    patch = attn2_patches(patched)[key]
    attn2 = unet_attn2(model.model.diffusion_model, key)
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(4, 64, attn2.to_q.in_features, generator=g, dtype=torch.float64)
    text = torch.randn(4, 77, 768, generator=g, dtype=torch.float64)
    weights = {name: getattr(flexip.projections[key], name).weight.double()
               for name in ("to_k_p", "to_v_p", "to_k_s", "to_v_s")}
    q, k, v = hidden @ attn2.to_q.weight.double().T, text @ attn2.to_k.weight.double().T, text @ attn2.to_v.weight.double().T
    # extra_options as ComfyUI's transformer block makes them: the model's transformer_options and the layer's facts
    options = {**patched.model_options["transformer_options"], "cond_or_uncond": list(chunks), "block": key[:2],
               "block_index": key[2], "n_heads": attn2.heads, "dim_head": q.shape[-1] // attn2.heads,
               "attn_precision": attn2.attn_precision}
    options.pop("patches_replace")
    with torch.no_grad():
        out = patch(q, k, v, options)
    expected = scale * design_formula(q, k, v, attn2.heads, chunks, preservation, personalization, weights, gamma, strength)
    error = (out - expected).abs().max().item()
    assert error < 1e-6 * expected.abs().max().item(), f"off {scale} x the design formula by {error:.3g}"
