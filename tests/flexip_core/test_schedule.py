"""Gamma schedules and per-sample gammas, on tiny float64 tensors:

- GammaSchedule.gamma against the formula written out, with asymmetric start, end and blocks;
- SigmaFractions inverts percent_to_sigma (SD1.5's discrete schedule, rebuilt here in float64 as
  ComfyUI defines it, and a log-linear one) between the table's entries and at its ends;
- GatedAttention with a schedule uses gamma(fraction of this call's sigma, this layer's block), keeps
  one gamma's weighted K/V per layout, and reads no sigma without a schedule or window;
- a tensor gamma [rows] gives row i of every CFG chunk gamma i, and a wrong count is refused.
"""
import math

import pytest
import torch

from flexip_core.injection import COND, UNCOND, attention_heads, gated_attention
from flexip_core.patch import GatedAttention
from flexip_core.schedule import GammaSchedule, SigmaFractions, SigmaSchedule

F64 = torch.float64
HEADS, INNER, NQ = 2, 8, 5


def schedule_formula(start, end, curve, blocks, t, block):
    c = t if curve == "linear" else (1 - math.cos(math.pi * t)) / 2
    return blocks[("input", "middle", "output").index(block)] * (start + (end - start) * c)


@pytest.mark.parametrize("curve", ["linear", "cosine"])
def test_gamma_is_the_schedule_formula(curve):
    blocks = (0.6, 1.0, 0.35)
    schedule = GammaSchedule(0.85, 0.15, curve, blocks)
    for t in (0.0, 0.2, 0.37, 0.5, 0.9, 1.0):
        for block in ("input", "middle", "output"):
            assert schedule.gamma(t, block) == pytest.approx(schedule_formula(0.85, 0.15, curve, blocks, t, block),
                                                             abs=1e-15)
    assert schedule.gamma(0.0, "middle") == 0.85 and schedule.gamma(1.0, "middle") == pytest.approx(0.15, abs=1e-15)
    assert schedule.gamma(-0.5, "input") == schedule.gamma(0.0, "input")  # fractions outside [0, 1] clamp
    assert schedule.gamma(1.5, "output") == schedule.gamma(1.0, "output")


def test_cosine_and_linear_differ_between_the_ends():
    linear, cosine = GammaSchedule(1.0, 0.0, "linear"), GammaSchedule(1.0, 0.0, "cosine")
    assert linear.gamma(0.2, "input") == pytest.approx(0.8) and cosine.gamma(0.2, "input") > 0.9
    assert cosine.gamma(0.5, "input") == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"start": float("nan"), "end": 0.0}, "start"),
    ({"start": 1.0, "end": 1.2}, "end"),
    ({"start": 1.0, "end": 0.0, "blocks": (1.0, -0.1, 1.0)}, "middle"),
    ({"start": 1.0, "end": 0.0, "blocks": (1.0, 1.0)}, "block multipliers"),
    ({"start": 1.0, "end": 0.0, "curve": "sigmoid"}, "curve"),
])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GammaSchedule(**kwargs)


# --- sigma -> fraction of the sampling --------------------------------------------------------

def sd15_sigmas():
    """SD1.5's 1000 training sigmas: linear betas in sqrt space from 0.00085 to 0.012 (ComfyUI's
    ModelSamplingDiscrete with its default settings), in float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=F64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    return ((1 - alphas) / alphas) ** 0.5


def discrete_percent_to_sigma(sigmas):
    """ComfyUI's ModelSamplingDiscrete.percent_to_sigma: log sigma linear between integer timesteps."""
    log_sigmas = sigmas.log()

    def percent_to_sigma(percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        t = (1.0 - percent) * 999.0
        low = math.floor(t)
        high = min(low + 1, 999)
        w = t - low
        return math.exp((1 - w) * log_sigmas[low].item() + w * log_sigmas[high].item())
    return percent_to_sigma


def test_fractions_invert_sd15s_percent_to_sigma_between_and_on_its_timesteps():
    sigmas = sd15_sigmas()
    percent_to_sigma = discrete_percent_to_sigma(sigmas)
    fraction = SigmaFractions(percent_to_sigma)
    for p in (0.001, 0.2, 0.2345, 0.5, 0.7, 0.9, 0.999):
        assert fraction(percent_to_sigma(p)) == pytest.approx(p, abs=1e-9)
    # The sampling's first and last sigmas are exactly the ends; beyond them the fraction clamps.
    assert fraction(sigmas[-1].item()) == 0.0 and fraction(sigmas[0].item()) == 1.0
    assert fraction(1e9) == 0.0 and fraction(100.0) == 0.0 and fraction(0.0) == 1.0 and fraction(1e-4) == 1.0
    # Log-linear in sigma between two timesteps, not linear in sigma.
    a, b = sigmas[500].item(), sigmas[501].item()
    assert fraction(math.sqrt(a * b)) == pytest.approx(1 - 500.5 / 999, abs=1e-9)
    assert abs(fraction((a + b) / 2) - (1 - 500.5 / 999)) > 1e-7


def test_fractions_invert_a_log_linear_percent_to_sigma():
    def edm(percent):  # ModelSamplingContinuousEDM's shape, sigma 0.002 .. 120
        return math.exp((math.log(120.0) - math.log(0.002)) * (1 - percent) + math.log(0.002))
    fraction = SigmaFractions(edm, points=7)
    for p in (0.05, 0.31, 0.5, 0.77):
        assert fraction(edm(p)) == pytest.approx(p, abs=1e-8)  # the ends are read 1e-9 inside


def test_a_percent_to_sigma_that_does_not_fall_is_refused():
    with pytest.raises(ValueError, match="not strictly decreasing"):
        SigmaFractions(lambda p: 1.0 + p, points=5)


# --- the patch ---------------------------------------------------------------------------------

def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def branches():
    p = {COND: (randn(1, 3, INNER, seed=1), randn(1, 3, INNER, seed=2)),
         UNCOND: (randn(1, 3, INNER, seed=3), randn(1, 3, INNER, seed=4))}
    s = {COND: (randn(1, 6, INNER, seed=5), randn(1, 6, INNER, seed=6)),
         UNCOND: (randn(1, 4, INNER, seed=7), randn(1, 4, INNER, seed=8))}
    return p, s


def attention(q, k, v, heads, attn_precision=None, transformer_options=None):
    return attention_heads(q, k, v, heads)


def call(patch, q, chunks, sigma=None):
    options = {"n_heads": HEADS, "cond_or_uncond": list(chunks)}
    if sigma is not None:
        options["sigmas"] = torch.full((q.shape[0] // len(chunks),), sigma, dtype=F64)
    return patch(q, q, q, options)


LOG_LINEAR = SigmaFractions(lambda p: math.exp(3.0 * (1 - p) - 3.0), points=11)  # sigma e^0 .. e^-3


def sigma_at(fraction):
    return math.exp(3.0 * (1 - fraction) - 3.0)


@pytest.mark.parametrize("key", [("input", 1, 0), ("output", 7, 0)])
def test_a_scheduled_patch_uses_the_gamma_of_its_block_at_each_sigma(key):
    p, s = branches()
    schedule = GammaSchedule(0.85, 0.15, "cosine", (0.6, 1.0, 0.35))
    patch = GatedAttention(key, p, s, 0.5, 0.7, attention, schedule=SigmaSchedule(schedule, LOG_LINEAR))
    q = randn(4, NQ, INNER, seed=9)
    chunks = (UNCOND, COND)
    for t in (0.2, 0.7, 0.2):  # back to the first sigma: no stale K/V of the second
        want = schedule_formula(0.85, 0.15, "cosine", (0.6, 1.0, 0.35), t, key[0])
        out = call(patch, q, chunks, sigma_at(t))
        torch.testing.assert_close(out, gated_attention(q, attention_heads(q, q, q, HEADS), p, s, want, 0.7, HEADS,
                                                        chunks), rtol=1e-12, atol=1e-12)
        other = gated_attention(q, attention_heads(q, q, q, HEADS), p, s, 1 - want, 0.7, HEADS, chunks)
        assert (out - other).abs().max() > 1e-3
    assert len(patch.terms) == 1, "only the latest gamma's K/V are kept per layout"
    call(patch, q[:2], (COND,), sigma_at(0.2))
    assert len(patch.terms) == 2, "each batch layout keeps its own"


def test_a_constant_schedule_weights_the_k_v_once():
    p, s = branches()
    patch = GatedAttention(("middle", 0, 0), p, s, 0.5, 1.0, attention,
                           schedule=SigmaSchedule(GammaSchedule(0.4, 0.4, "linear", (1.0, 0.5, 1.0)), LOG_LINEAR))
    q = randn(2, NQ, INNER, seed=10)
    call(patch, q, (COND, UNCOND), sigma_at(0.1))
    (terms,) = patch.terms.values()
    call(patch, q, (COND, UNCOND), sigma_at(0.8))
    assert list(patch.terms.values()) == [terms] and list(patch.terms)[0][-1] == 0.2


def test_without_schedule_or_window_the_patch_reads_no_sigma():
    """No sigmas in extra_options: the fixed-gamma path never looks (on a GPU, .item() would wait)."""
    p, s = branches()
    q = randn(2, NQ, INNER, seed=11)
    fixed = GatedAttention(("input", 1, 0), p, s, 0.3, 1.0, attention)
    call(fixed, q, (COND, UNCOND))
    assert list(fixed.terms) == [(q.device, q.dtype, (COND, UNCOND), 2)]
    scheduled = GatedAttention(("input", 1, 0), p, s, 0.3, 1.0, attention,
                               schedule=SigmaSchedule(GammaSchedule(1.0, 0.0), LOG_LINEAR))
    with pytest.raises(KeyError, match="sigmas"):
        call(scheduled, q, (COND, UNCOND))


@pytest.mark.parametrize("chunks", [(UNCOND, COND), (COND,), (COND, UNCOND, COND)])
def test_per_sample_gammas_give_row_i_of_every_chunk_gamma_i(chunks):
    p, s = branches()
    gammas = torch.tensor([0.2, 0.9, 0.55], dtype=F64)
    rows = len(gammas)
    patch = GatedAttention(("output", 3, 0), p, s, gammas, 0.8, attention)
    q = randn(rows * len(chunks), NQ, INNER, seed=12)
    out = call(patch, q, chunks)
    base = attention_heads(q, q, q, HEADS)
    for c, kind in enumerate(chunks):
        for i in range(rows):
            row = slice(c * rows + i, c * rows + i + 1)
            want = gated_attention(q[row], base[row], p, s, gammas[i].item(), 0.8, HEADS, (kind,))
            torch.testing.assert_close(out[row], want, rtol=1e-12, atol=1e-12)
    reversed_order = gated_attention(q[:1], base[:1], p, s, gammas[-1].item(), 0.8, HEADS, chunks[:1])
    assert (out[:1] - reversed_order).abs().max() > 1e-3


def test_a_gamma_count_that_is_not_the_batch_is_refused_by_the_callers_error():
    p, s = branches()
    q = randn(4, NQ, INNER, seed=13)
    patch = GatedAttention(("input", 1, 0), p, s, torch.tensor([0.2, 0.9, 0.55]), 1.0, attention)
    with pytest.raises(ValueError, match="3 per-sample gammas for a batch of 2 rows per chunk"):
        call(patch, q, (COND, UNCOND))

    class Named(ValueError):
        pass
    patch.batch_error = lambda gammas, rows: Named(f"{gammas} for {rows}")
    with pytest.raises(Named, match="3 for 4"):
        call(patch, q, (COND,))
    assert not patch.terms
