"""The training-time gate: gamma = alpha for image samples, 1 - beta for video / multi-view samples,
alpha and beta learned through sigmoids, starting near 1."""
import math

import pytest
import torch

from flexip_core.gate import INITIAL_ALPHA_BETA, TrainingGate

IS_VIDEO = torch.tensor([False, True, True, False, True])


def test_starts_near_one():
    gate = TrainingGate()
    assert INITIAL_ALPHA_BETA == pytest.approx(0.9)
    assert gate.alpha.item() == pytest.approx(0.9, abs=1e-6)
    assert gate.beta.item() == pytest.approx(0.9, abs=1e-6)


@pytest.mark.parametrize("initial", [0.5, 0.75, 0.99])
def test_initial_value_is_honoured(initial):
    gate = TrainingGate(initial)
    assert gate.alpha.item() == pytest.approx(initial, abs=1e-6)
    assert gate.beta.item() == pytest.approx(initial, abs=1e-6)


def test_gamma_is_alpha_for_images_and_one_minus_beta_for_video():
    gate = TrainingGate()
    with torch.no_grad():  # make alpha and beta distinct so a swap would show
        gate.alpha_logit.fill_(2.0)
        gate.beta_logit.fill_(-0.5)
    alpha, beta = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(0.5))
    gamma = gate(IS_VIDEO)
    assert gamma.shape == IS_VIDEO.shape
    want = torch.tensor([alpha, 1 - beta, 1 - beta, alpha, 1 - beta], dtype=gamma.dtype)
    torch.testing.assert_close(gamma, want, rtol=1e-6, atol=1e-6)


def test_initial_gamma_favours_preservation_for_images_and_personalization_for_video():
    gamma = TrainingGate()(IS_VIDEO)
    assert (gamma[~IS_VIDEO] > 0.85).all() and (gamma[IS_VIDEO] < 0.15).all()


@pytest.mark.parametrize("logit", [-1e4, -100.0, -20.0, 20.0, 100.0, 1e4, float("inf"), float("-inf")])
def test_gamma_stays_in_unit_interval_for_extreme_logits(logit):
    gate = TrainingGate()
    with torch.no_grad():
        gate.alpha_logit.fill_(logit)
        gate.beta_logit.fill_(-logit)
    gamma = gate(IS_VIDEO)
    assert torch.isfinite(gamma).all()
    assert ((gamma >= 0) & (gamma <= 1)).all(), gamma
    assert 0 <= gate.alpha.item() <= 1 and 0 <= gate.beta.item() <= 1


def test_gradients_reach_both_logits():
    gate = TrainingGate()
    with torch.no_grad():
        gate.alpha_logit.fill_(0.3)
        gate.beta_logit.fill_(-1.2)
    gate(IS_VIDEO).sum().backward()
    a, b = torch.sigmoid(torch.tensor(0.3)), torch.sigmoid(torch.tensor(-1.2))
    n_image, n_video = int((~IS_VIDEO).sum()), int(IS_VIDEO.sum())
    # d gamma_image / d alpha_logit = a (1 - a); d gamma_video / d beta_logit = -b (1 - b).
    torch.testing.assert_close(gate.alpha_logit.grad, n_image * a * (1 - a))
    torch.testing.assert_close(gate.beta_logit.grad, -n_video * b * (1 - b))
    assert gate.alpha_logit.grad != 0 and gate.beta_logit.grad != 0


def test_image_only_batch_leaves_beta_untouched():
    gate = TrainingGate()
    gate(torch.tensor([False, False])).sum().backward()
    assert gate.alpha_logit.grad != 0
    assert gate.beta_logit.grad is None or gate.beta_logit.grad == 0


def test_logits_are_the_only_parameters():
    gate = TrainingGate()
    assert {name for name, _ in gate.named_parameters()} == {"alpha_logit", "beta_logit"}
    assert all(p.requires_grad for p in gate.parameters())


def test_sampled_gamma_inverts_the_beta_cdfs():
    """Beta(2, 1) for image samples (CDF gamma^2), Beta(1, 2) for video ones (CDF 1 - (1 - gamma)^2),
    checked at quantiles in float64, and their histograms over 200k draws."""
    from flexip_core.gate import sampled_gamma
    u = torch.tensor([0.0, 0.04, 0.25, 0.81], dtype=torch.float64)
    assert sampled_gamma(u, torch.zeros(4, dtype=torch.bool)).tolist() == pytest.approx([0.0, 0.2, 0.5, 0.9])
    assert sampled_gamma(u, torch.ones(4, dtype=torch.bool)).tolist() == pytest.approx([1.0, 0.8, 0.5, 0.1])
    draws = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    image, video = sampled_gamma(draws, torch.zeros_like(draws, dtype=torch.bool)), sampled_gamma(draws, torch.ones_like(draws, dtype=torch.bool))
    # P(gamma < 0.3): 0.09 for images, 0.51 for video; the pooled law of the two kinds is U(0, 1)
    assert (image < 0.3).double().mean().item() == pytest.approx(0.09, abs=0.005)
    assert (video < 0.3).double().mean().item() == pytest.approx(0.51, abs=0.005)
    pooled = torch.cat((image, video))
    assert torch.histc(pooled, 10, 0, 1).div(len(pooled)).tolist() == pytest.approx([0.1] * 10, abs=0.005)
