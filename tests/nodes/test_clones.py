"""FlexIP's patches stay right however the host copies model_options on ModelPatcher.clone():
ComfyUI 0.3.75 deep-copies it, 0.33.0 copies only its dicts and lists and shares every patch object.
Clones of one FlexIP model that then diverge (another gamma on top, another pack's patch, another
dtype) each compute their own formula, and leave the others' results exactly as they were."""
import copy

import pytest
import torch

from flexip_core import COND, UNCOND

from tests.nodes.test_apply_node import (ForeignPatch, adapter_tokens, apply, attn2_patches, design_formula,  # noqa: F401
                                         flexip, unet_attn2, unet_call, with_foreign)

KEY = ("input", 7, 0)
GAMMA, OTHER_GAMMA, STRENGTH = 0.2, 0.9, 0.7


def copy_dicts_and_lists(value):
    """model_options copied as ComfyUI 0.33.0's comfy.utils.deepcopy_list_dict copies it (without its memo,
    which only matters for a dict or list held twice)."""
    if isinstance(value, dict):
        return {k: copy_dicts_and_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_dicts_and_lists(v) for v in value]
    return value


def host_clone(model):
    return model.clone()


def deep_copy_clone(model):
    clone = model.clone()
    clone.model_options = copy.deepcopy(model.model_options)
    return clone


def shared_objects_clone(model):
    clone = model.clone()
    clone.model_options = copy_dicts_and_lists(model.model_options)
    return clone


CLONES = [host_clone, deep_copy_clone, shared_objects_clone]


def layer_inputs(model, dtype=torch.float32):
    """q, k, v and extra_options for KEY's cross-attention, two CFG chunks of 2 rows."""
    attn2 = unet_attn2(model.model.diffusion_model, KEY)
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(4, 64, attn2.to_q.in_features, generator=g)
    text = torch.randn(4, 77, 768, generator=g)
    with torch.no_grad():
        q, k, v = attn2.to_q(hidden), attn2.to_k(text), attn2.to_v(text)
    options = {"cond_or_uncond": [UNCOND, COND], "block": KEY[:2], "block_index": KEY[2], "n_heads": attn2.heads,
               "attn_precision": attn2.attn_precision}
    return q.to(dtype), k.to(dtype), v.to(dtype), options


def stacked_layer(pack, model):
    """KEY's patch as the pack's DIFFUSION_MODEL wrapper resolves it at a UNet call (other packs' patches found)."""
    options = model.model_options["transformer_options"]
    return pack.flexip_core.patch.stack_patches(options["patches_replace"]["attn2"], options["flexip_attn2"])[KEY]


@pytest.mark.parametrize("clone", CLONES, ids=lambda c: c.__name__)
def test_diverging_clones_each_compute_their_own_formula(pack, sd15_model, flexip, adapter_tokens, clone):
    model, _ = sd15_model
    tokens = adapter_tokens(77)
    weights = {name: getattr(flexip.projections[KEY], name).weight.double()
               for name in ("to_k_p", "to_v_p", "to_k_s", "to_v_s")}
    heads = unet_attn2(model.model.diffusion_model, KEY).heads

    def formula(q, k, v, gamma):
        return design_formula(q, k, v, heads, (UNCOND, COND), *tokens, weights, gamma, STRENGTH)

    original = apply(pack, model, flexip, tokens, GAMMA, STRENGTH)
    q, k, v, options = layer_inputs(model)
    with torch.no_grad():
        first = stacked_layer(pack, original)(q, k, v, options)
        before_unet = unet_call(original)
    expected = formula(q, k, v, GAMMA)
    tolerance = 1e-5 * expected.abs().max().item()
    assert (first.double() - expected).abs().max().item() < tolerance

    # Another gamma on top of a clone: FlexIP twice, the clone's layer adds its own branches.
    other_gamma = apply(pack, clone(original), flexip, tokens, OTHER_GAMMA, STRENGTH)
    # Another pack's patch on a clone (three-part keys: it replaces FlexIP's in the table, FlexIP runs it).
    foreign = ForeignPatch()
    foreign.calls.clear()
    foreign_model = with_foreign(clone(original), foreign, three_part_keys=True)
    # Another dtype layout on a plain clone: its own memo entry.
    half = clone(original)
    q16, k16, v16, _ = layer_inputs(model, torch.bfloat16)
    with torch.no_grad():
        out_other_gamma = stacked_layer(pack, other_gamma)(q, k, v, options)
        out_foreign = stacked_layer(pack, foreign_model)(q, k, v, options)
        out_half = stacked_layer(pack, half)(q16, k16, v16, options)
        again = stacked_layer(pack, original)(q, k, v, options)
        after_unet = unet_call(original)

    text = design_formula(q, k, v, heads, (UNCOND, COND), *tokens, weights, 0.0, 0.0)
    checks = {
        "another gamma on top": (out_other_gamma, expected + formula(q, k, v, OTHER_GAMMA) - text, tolerance),
        "another pack's patch": (out_foreign, expected + 0.25, tolerance),
        "bfloat16": (out_half, formula(q16, k16, v16, GAMMA), 0.05 * expected.abs().max().item()),
    }
    for name, (out, want, tol) in checks.items():
        error = (out.double() - want).abs().max().item()
        assert error < tol, f"{name}: off its formula by {error:.3g}"
    assert len(foreign.calls) == 1, "the other pack's patch did not run exactly once"
    assert torch.equal(again, first) and torch.equal(after_unet, before_unet), "a clone changed the original's result"
    assert attn2_patches(original)[KEY].wrapped is None, "a clone changed the original's patch"
