"""Per-layer projections: ComfyUI's attn2 keying of SD1.5's 16 cross-attentions, their widths,
the weight-file names, and init_from_unet."""
import re

import pytest
import torch

from flexip_core.config import SD15, TINY
from flexip_core.projections import BranchProjections, LayerProjections, layer_name


def sd15_cross_attention_layers():
    """Derive the keys the way ComfyUI's openaimodel.UNetModel numbers its blocks for SD1.5
    (model_channels 320, channel_mult (1, 2, 4, 4), num_res_blocks 2, attention at the first
    three levels, one transformer per SpatialTransformer): ('input', i) enumerates input_blocks
    (index 0 is conv_in, a downsample follows every level but the last), ('middle', 0), and
    ('output', i) enumerates output_blocks (num_res_blocks + 1 per level, deepest level first)."""
    model_channels, channel_mult, num_res_blocks, attention_levels = 320, (1, 2, 4, 4), 2, {0, 1, 2}
    layers = []
    index = 0  # conv_in
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            index += 1
            if level in attention_levels:
                layers.append((("input", index, 0), model_channels * mult))
        if level != len(channel_mult) - 1:
            index += 1  # downsample
    layers.append((("middle", 0, 0), model_channels * channel_mult[-1]))
    index = -1
    for level, mult in reversed(list(enumerate(channel_mult))):
        for _ in range(num_res_blocks + 1):
            index += 1
            if level in attention_levels:
                layers.append((("output", index, 0), model_channels * mult))
    return layers


EXPECTED_SD15 = (
    [(("input", i, 0), w) for i, w in ((1, 320), (2, 320), (4, 640), (5, 640), (7, 1280), (8, 1280))]
    + [(("middle", 0, 0), 1280)]
    + [(("output", i, 0), w) for i, w in ((3, 1280), (4, 1280), (5, 1280), (6, 640), (7, 640),
                                         (8, 640), (9, 320), (10, 320), (11, 320))]
)


def test_derivation_agrees_with_the_literal_list():
    assert sd15_cross_attention_layers() == EXPECTED_SD15
    assert len(EXPECTED_SD15) == 16


def test_sd15_layer_keys_and_widths():
    projections = LayerProjections(SD15)
    assert list(projections.keys) == [key for key, _ in EXPECTED_SD15]
    assert list(SD15.layers) == EXPECTED_SD15
    for key, inner in EXPECTED_SD15:
        layer = projections[key]
        for linear in (layer.to_k_p, layer.to_v_p, layer.to_k_s, layer.to_v_s):
            assert linear.weight.shape == (inner, SD15.context_dim), key
            assert linear.bias is None, key  # SD1.5's to_k / to_v have no bias


def test_layer_name_and_state_dict_keys():
    assert layer_name(("input", 1, 0)) == "input_1_0"
    assert layer_name(("output", 11, 0)) == "output_11_0"
    projections = LayerProjections(SD15)
    want = {f"layers.{layer_name(key)}.{proj}.weight"
            for key, _ in EXPECTED_SD15 for proj in ("to_k_p", "to_v_p", "to_k_s", "to_v_s")}
    assert set(projections.state_dict()) == want
    assert len({layer_name(key) for key, _ in EXPECTED_SD15}) == 16  # names are unique


def test_unknown_layer_key_raises():
    projections = LayerProjections(TINY)
    with pytest.raises(KeyError):
        projections[("input", 3, 0)]


def unet_weights(config, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return {key: (torch.randn(inner, config.context_dim, generator=gen, dtype=dtype),
                  torch.randn(inner, config.context_dim, generator=gen, dtype=dtype))
            for key, inner in config.layers}


@pytest.mark.parametrize("config", [TINY, SD15], ids=lambda c: c.name)
def test_init_from_unet_copies_into_both_branches_exactly(config):
    projections = LayerProjections(config)
    weights = unet_weights(config)
    projections.init_from_unet(weights)
    for key, (to_k, to_v) in weights.items():
        layer = projections[key]
        assert torch.equal(layer.to_k_p.weight, to_k), key
        assert torch.equal(layer.to_k_s.weight, to_k), key
        assert torch.equal(layer.to_v_p.weight, to_v), key
        assert torch.equal(layer.to_v_s.weight, to_v), key
        # Copies, not aliases: the four stay independent trainable tensors.
        ptrs = {lin.weight.data_ptr() for lin in (layer.to_k_p, layer.to_k_s, layer.to_v_p, layer.to_v_s)}
        assert len(ptrs) == 4 and to_k.data_ptr() not in ptrs and to_v.data_ptr() not in ptrs
    # Still trainable parameters after the copy.
    assert all(p.requires_grad and isinstance(p, torch.nn.Parameter) for p in projections.parameters())


def test_init_from_unet_source_edits_do_not_leak():
    projections = LayerProjections(TINY)
    weights = unet_weights(TINY, seed=1)
    projections.init_from_unet(weights)
    key = TINY.layers[0][0]
    kept = weights[key][0].clone()
    weights[key][0].add_(1.0)
    assert torch.equal(projections[key].to_k_p.weight, kept)


def test_init_from_unet_forward_reads_like_the_layer():
    """After init, K_P = P @ to_k^T and V_S = S @ to_v^T: each branch reads tokens like the layer reads text."""
    projections = LayerProjections(TINY).double()
    weights = unet_weights(TINY, seed=2, dtype=torch.float64)
    projections.init_from_unet(weights)
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(2, 6, TINY.context_dim, generator=gen, dtype=torch.float64)
    s = torch.randn(2, 9, TINY.context_dim, generator=gen, dtype=torch.float64)
    for key, (to_k, to_v) in weights.items():
        (k_p, v_p), (k_s, v_s) = projections[key](p, s)
        torch.testing.assert_close(k_p, p @ to_k.T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v_p, p @ to_v.T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k_s, s @ to_k.T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v_s, s @ to_v.T, rtol=1e-12, atol=1e-12)


def test_branch_projections_are_separate_parameters():
    torch.manual_seed(0)
    branch = BranchProjections(8, 12).double()
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(1, 3, 8, generator=gen, dtype=torch.float64)
    (k_p, v_p), (k_s, v_s) = branch(p, p)
    # Fresh (not UNet-initialised) branches are independent random maps.
    assert not torch.allclose(k_p, k_s) and not torch.allclose(v_p, v_s) and not torch.allclose(k_p, v_p)
    torch.testing.assert_close(k_p, p @ branch.to_k_p.weight.T, rtol=0, atol=0)
    torch.testing.assert_close(v_s, p @ branch.to_v_s.weight.T, rtol=0, atol=0)


def _names_layer(message, key):
    return str(key) in message or layer_name(key) in message


@pytest.mark.parametrize("which", ["to_k", "to_v", "transposed"])
def test_wrong_shape_raises_naming_the_layer(which):
    weights = unet_weights(SD15)
    key = ("output", 7, 0)  # inner 640
    to_k, to_v = weights[key]
    if which == "to_k":
        weights[key] = (torch.randn(320, 768), to_v)
    elif which == "to_v":
        weights[key] = (to_k, torch.randn(640, 1024))
    else:
        weights[key] = (to_k.T.contiguous(), to_v.T.contiguous())
    with pytest.raises(ValueError) as info:
        LayerProjections(SD15).init_from_unet(weights)
    assert _names_layer(str(info.value), key), str(info.value)
    # No other layer is blamed.
    others = [k for k, _ in SD15.layers if k != key]
    assert not any(re.search(re.escape(str(k)) + r"|\b" + layer_name(k) + r"\b", str(info.value)) for k in others)


@pytest.mark.parametrize("key", [("input", 1, 0), ("middle", 0, 0), ("output", 11, 0)])
def test_missing_layer_raises_naming_the_layer(key):
    weights = unet_weights(SD15)
    del weights[key]
    with pytest.raises(ValueError) as info:
        LayerProjections(SD15).init_from_unet(weights)
    assert _names_layer(str(info.value), key), str(info.value)


def test_missing_layer_raises_before_any_copy():
    projections = LayerProjections(TINY)
    before = {k: v.clone() for k, v in projections.state_dict().items()}
    weights = unet_weights(TINY)
    del weights[TINY.layers[-1][0]]
    with pytest.raises(ValueError):
        projections.init_from_unet(weights)
    for k, v in projections.state_dict().items():
        assert torch.equal(v, before[k]), k
