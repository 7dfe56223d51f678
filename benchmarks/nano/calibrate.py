"""The slider's calibration (flexip_core.slider): the exponent k of blend weight = gamma^k, fitted once
after training, on training subjects only (issue 15, round 3; benchmarks/README.md).

FlexIP is swept at fixed blend weights (the slider map bypassed) on calibration cases made as the
evaluation makes its cases, from training subjects instead of held-out ones, with three sampling seeds
as the evaluation has, none of them the evaluation's (round 4: one seed gave a noisy fit). The identity
curve of each case set (scene cases; recolour cases where the size has them), averaged over the seeds
and cases, is then read at the blend weights the slider's values give, gamma^k, by linear interpolation, and
k is the candidate whose worse case set has the smallest largest/mean neighbour jump
(flexip_core.smoothness.largest_jump), the smaller k on a tie. Every attribute counts here (the
drawability stage comes later, and in the miniature every attribute is drawable).
"""
import numpy as np
import torch

from flexip_core.slider import blend_weight
from flexip_core.smoothness import largest_jump

from . import scoring, world
from .evaluate import Method, run_sweeps
from .recolour import recolour_cases

BLEND_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
EXPONENTS = tuple(1.0 + 0.25 * i for i in range(13))  # 1, 1.25, ... 4
SEEDS = (100, 101, 102)  # sampling seeds: the evaluation's are 0, 1, 2
CASE_SEED = 5       # the cases' reference and asked-for scenes: the evaluation's are drawn with seed 1
SUBJECT_STRIDE = 7  # every 7th training subject: 48 of the 336


def calibration_cases(count, kind):
    """`count` training subjects' cases, kind "scene" (world.evaluation_cases) or "recolour"."""
    training, _ = world.split()
    cases = world.evaluation_cases(training[::SUBJECT_STRIDE][:count], 1, seed=CASE_SEED)
    return recolour_cases(cases) if kind == "recolour" else cases


def identity_curve(base, flexip, cases, references, sampling, progress=True):
    """FlexIP's identity (scoring.py, every attribute counted) at each of BLEND_WEIGHTS: (mean over seeds
    and cases [W], per seed and case [seeds, W, cases])."""
    method = Method("FlexIP", flexip, "blend weight", BLEND_WEIGHTS, lambda weight: (weight, 1.0), references)
    pictures = torch.as_tensor(run_sweeps(base, [method], cases, SEEDS, sampling, progress)["FlexIP"]["pictures"])
    pictures = pictures.float() / 255  # [seeds, W, cases, 32, 32, 3]
    found = scoring.score(scoring.PlacementDecoder()(pictures.flatten(0, 2)),
                          list(cases) * (len(SEEDS) * len(BLEND_WEIGHTS)), set(scoring.ATTRIBUTES))
    per_case = found["identity"].reshape(len(SEEDS), len(BLEND_WEIGHTS), len(cases)).numpy()
    return per_case.mean((0, 2)), per_case


def fit_exponent(weights, curves, slider, exponents=EXPONENTS):
    """(k, {k: the worst case set's largest/mean jump}): curves {case set: identity at each blend weight},
    read at slider ** k."""
    slider = np.asarray(slider, dtype=np.float64)
    worst = {}
    for k in exponents:
        jumps = [largest_jump(slider, np.interp(blend_weight(slider, k), weights, curve)) for curve in curves.values()]
        worst[k] = max((j for j in jumps if not np.isnan(j)), default=np.nan)
    finite = [k for k in exponents if not np.isnan(worst[k])]
    return (min(finite, key=lambda k: (worst[k], k)) if finite else 1.0), worst


def calibrated_method(flexip, values, references, exponent):
    """FlexIP swept over the slider's values, each mapped by the weight file's slider map."""
    return Method("FlexIP", flexip, "gamma", tuple(values), lambda gamma: (blend_weight(gamma, exponent), 1.0), references)
