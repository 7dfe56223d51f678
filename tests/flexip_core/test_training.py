"""flexip_core.training: CFG dropout, the training conditioner and patches, the epsilon loss,
against float64 references."""
import math

import pytest
import torch
import torch.nn.functional as F

from flexip_core.config import TINY
from flexip_core.injection import COND
from flexip_core.model import FlexIP
from flexip_core.training import (CFGDropout, TrainingConditioner, drop, epsilon_loss, subject_loss_weight,
                                  training_patches)


def test_dropout_events_are_disjoint_with_the_configured_rates():
    dropout = CFGDropout(text=0.1, image=0.2, both=0.3)
    u = torch.linspace(0, 1, 100001)[:-1]  # exact rates on an even grid of uniform draws
    text, image = dropout.decide(u)
    assert (text & image).float().mean().item() == pytest.approx(0.3, abs=1e-4)
    assert (text & ~image).float().mean().item() == pytest.approx(0.1, abs=1e-4)
    assert (image & ~text).float().mean().item() == pytest.approx(0.2, abs=1e-4)
    with pytest.raises(ValueError):
        CFGDropout(text=0.6, image=0.6, both=0.0)


def test_drop_replaces_only_the_dropped_rows():
    values = torch.arange(12.0).view(3, 2, 2)
    empty = torch.full((3, 2, 2), -1.0)
    out = drop(values, torch.tensor([False, True, False]), empty)
    assert torch.equal(out[0], values[0]) and torch.equal(out[2], values[2]) and torch.equal(out[1], empty[1])
    assert torch.equal(drop(values, torch.tensor([True, False, True]))[0], torch.zeros(2, 2))


def test_conditioner_gives_each_sample_its_own_kv_and_gate_gamma():
    torch.manual_seed(0)
    flexip = FlexIP(TINY).double()
    clip, dino = torch.randn(2, TINY.clip.dim, dtype=torch.float64), torch.randn(2, 5, TINY.dino.dim, dtype=torch.float64)
    text = torch.randn(2, 7, TINY.text_dim, dtype=torch.float64)
    kv, gamma = TrainingConditioner(flexip)(clip, dino, text, torch.tensor([False, True]))
    assert gamma.tolist() == pytest.approx([flexip.gate.alpha.item(), 1 - flexip.gate.beta.item()])
    key, inner = TINY.layers[0]
    (k_p, v_p), (k_s, v_s) = kv[key]
    p1 = flexip.preservation(clip[1:], dino[1:])
    s1 = flexip.personalization(text[1:], clip[1:])
    assert torch.allclose(k_p[1:], flexip.projections[key].to_k_p(p1)) and torch.allclose(v_s[1:], flexip.projections[key].to_v_s(s1))
    assert k_p.shape == (2, TINY.num_latent_queries + TINY.num_clip_tokens, inner) and k_s.shape == (2, 7, inner)


def reference_attention(q, k, v, heads):
    b, n, d = q.shape
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


def test_training_patch_is_the_design_formula_per_sample():
    """out_i = Attn(q_i, text_i) + gamma_i Attn(q_i, K_P,i, V_P,i) + (1 - gamma_i) Attn(q_i, K_S,i, V_S,i),
    with gamma 0.2 for one sample and 0.9 for the other (a swapped branch or gamma fails)."""
    g = torch.Generator().manual_seed(1)
    heads, inner = 2, 8
    q, k, v = (torch.randn(2, 6, inner, generator=g, dtype=torch.float64) for _ in range(3))
    kv_p = (torch.randn(2, 3, inner, generator=g, dtype=torch.float64), torch.randn(2, 3, inner, generator=g, dtype=torch.float64))
    kv_s = (torch.randn(2, 5, inner, generator=g, dtype=torch.float64), torch.randn(2, 5, inner, generator=g, dtype=torch.float64))
    gamma = torch.tensor([0.2, 0.9], dtype=torch.float64)

    def attention(q_, k_, v_, heads_, mask=None, attn_precision=None, transformer_options=None):
        # optimized_attention's signature; a mask [B, 1, N_k] is added to every head's scores, as ComfyUI does
        mask = None if mask is None else mask.unsqueeze(1)
        return F.scaled_dot_product_attention(*(t.unflatten(-1, (heads_, -1)).transpose(1, 2) for t in (q_, k_, v_)),
                                              attn_mask=mask).transpose(1, 2).flatten(2)

    (patch,) = training_patches({("input", 1, 0): (kv_p, kv_s)}, gamma, attention).values()
    out = patch(q, k, v, {"n_heads": heads, "cond_or_uncond": [COND]})
    expected = torch.stack([
        reference_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], heads)[0]
        + gamma[i] * reference_attention(q[i:i + 1], kv_p[0][i:i + 1], kv_p[1][i:i + 1], heads)[0]
        + (1 - gamma[i]) * reference_attention(q[i:i + 1], kv_s[0][i:i + 1], kv_s[1][i:i + 1], heads)[0]
        for i in range(2)])
    assert torch.allclose(out, expected, atol=1e-12)
    assert not patch.terms  # training keeps nothing between calls (checkpointing recomputes)


@pytest.mark.parametrize("v_prediction", [False, True])
def test_epsilon_loss_is_the_mse_of_the_models_own_output(v_prediction):
    """ComfyUI: x = x0 + sigma eps; EPS denoised = x - sigma eps_pred; V denoised (sigma_data 1) =
    x / (sigma^2 + 1) - v_pred sigma / sqrt(sigma^2 + 1), target v = (sigma x0 ... ) from the true x0."""
    g = torch.Generator().manual_seed(2)
    x0, eps, out = (torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.03, 1.0, 14.6], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * eps
    if v_prediction:
        denoised = x / (s ** 2 + 1) - out * s / (s ** 2 + 1).sqrt()
        target = (x / (s ** 2 + 1) - x0) * (s ** 2 + 1).sqrt() / s  # the v that denoises to x0 exactly
    else:
        denoised = x - s * out
        target = eps
    expected = ((out - target) ** 2).flatten(1).mean(1).mean()
    assert epsilon_loss(denoised, x0, sigma, v_prediction).item() == pytest.approx(expected.item(), rel=1e-9)


def test_subject_loss_weight_is_the_area_mean_of_the_mask_scaled_to_mean_one():
    """Weights on a 4 x 6 latent grid from 8 x 12 masks (2 x 2 pixels per cell) against a float64
    reference written out cell by cell: 1 + (w - 1) * the cell's mean mask value, over the sample's mean."""
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(2, 8, 12, generator=g, dtype=torch.float64)
    masks[1] = (masks[1] > 0.7).double()  # one soft mask, one binary
    weight = subject_loss_weight(masks, (4, 6), 5.0)
    assert weight.shape == (2, 1, 4, 6) and weight.dtype == torch.float64
    for b in range(2):
        cells = torch.tensor([[masks[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean().item() for j in range(6)]
                              for i in range(4)], dtype=torch.float64)
        raw = 1 + 4.0 * cells
        assert torch.allclose(weight[b, 0], raw / raw.mean(), atol=1e-12, rtol=0)
        assert weight[b].mean().item() == pytest.approx(1.0, abs=1e-12)
    subject = weight[1, 0][masks[1].view(4, 2, 6, 2).mean((1, 3)) == 1]
    background = weight[1, 0][masks[1].view(4, 2, 6, 2).mean((1, 3)) == 0]
    assert torch.allclose(subject / background.mean(), torch.full_like(subject, 5.0), atol=1e-12, rtol=0)
    # without a subject, or all subject, or weight 1, every pixel weighs 1
    for mask, w in ((torch.ones(1, 8, 12), 5.0), (torch.zeros(1, 8, 12), 5.0), (masks[:1].float(), 1.0)):
        assert torch.allclose(subject_loss_weight(mask, (4, 6), w), torch.ones(1, 1, 4, 6), atol=1e-6, rtol=0)


@pytest.mark.parametrize("v_prediction", [False, True])
def test_weighted_epsilon_loss_against_a_float64_reference(v_prediction):
    """Each sample's loss is the mean over its elements of weight * squared error, times its noise
    weight; a weight of ones is the unweighted loss exactly, and a weight of the wrong shape is refused."""
    g = torch.Generator().manual_seed(4)
    x0, x0_pred = (torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    sigma = torch.tensor([0.03, 1.0, 14.6], dtype=torch.float64)
    weight = torch.rand(3, 1, 2, 3, generator=g, dtype=torch.float64) * 4
    expected = 0.0
    for b in range(3):
        noise_weight = (sigma[b] ** 2 + 1) / sigma[b] ** 2 if v_prediction else sigma[b] ** -2
        total = sum(weight[b, 0, i, j] * (x0_pred[b, c, i, j] - x0[b, c, i, j]) ** 2
                    for c in range(4) for i in range(2) for j in range(3))
        expected += noise_weight * total / (4 * 2 * 3) / 3
    loss = epsilon_loss(x0_pred, x0, sigma, v_prediction, weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.equal(epsilon_loss(x0_pred, x0, sigma, v_prediction, torch.ones(3, 1, 2, 3, dtype=torch.float64)),
                       epsilon_loss(x0_pred, x0, sigma, v_prediction))
    with pytest.raises(ValueError, match="does not broadcast"):
        epsilon_loss(x0_pred, x0, sigma, v_prediction, torch.ones(3, 2, 2, 3))


def test_subject_weighting_moves_the_loss_toward_the_subjects_error():
    """An error only on the subject counts (w = 4, subject a quarter of the picture) 4 / 1.75 times
    as much as unweighted; an error only on the background 1 / 1.75 times."""
    x0 = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    mask = torch.zeros(1, 8, 8, dtype=torch.float64)
    mask[:, :4, :4] = 1  # the top-left latent quarter
    weight = subject_loss_weight(mask, (4, 4), 4.0)
    sigma = torch.ones(1, dtype=torch.float64)
    on_subject, on_background = x0.clone(), x0.clone()
    on_subject[..., :2, :2] = 1
    on_background[..., 2:, :] = 1
    for error, factor in ((on_subject, 4 / 1.75), (on_background, 1 / 1.75)):
        assert epsilon_loss(error, x0, sigma, weight=weight).item() == pytest.approx(
            factor * epsilon_loss(error, x0, sigma).item(), rel=1e-12)
