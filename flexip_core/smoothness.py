"""How smoothly a control (FlexIP's gamma, another method's strength) moves the result.

The paper shows the gamma slide only as pictures; these numbers measure it. One sweep is one
subject, prompt and seed generated at n >= 2 control values; its CLIP-I and CLIP-T at each value
give three kinds of number:

- monotonicity: Spearman's rank correlation of the control with CLIP-I and with CLIP-T
  (scipy.stats.spearmanr). +1 or -1: the metric only ever moves one way as the control grows.
  NaN when the metric does not change at all over the sweep (a flat curve has no ranks).
- largest jump: the steepest step between neighbouring control values, |d metric| / d control,
  divided by the sweep's mean rate (total variation / control range). With evenly spaced control
  values this is the largest |d metric| over the mean |d metric|: 1 when every step moves the
  metric equally, n - 1 when all the change happens in one step. NaN on a flat curve.
- front area: the area of the (CLIP-T, CLIP-I) plane that the sweep's points dominate when both
  are better higher, measured from a reference point (default (0, 0); cosines below it count as
  equal to it): the union of the rectangles [ref_t, t_i] x [ref_i, i_i], i.e. the hypervolume of
  the front the sweep traces. A method whose control reaches better trade-offs covers more.
"""
import math
import warnings

import numpy as np
from scipy.stats import spearmanr


def _sorted_sweep(controls, *curves):
    controls = np.asarray(controls, dtype=np.float64)
    curves = [np.asarray(c, dtype=np.float64) for c in curves]
    if controls.ndim != 1 or len(controls) < 2 or any(c.shape != controls.shape for c in curves):
        raise ValueError(f"a sweep needs >= 2 control values and one value of each metric per control, got "
                         f"{len(controls)} controls and metric lengths {[len(c) for c in curves]}")
    if len(np.unique(controls)) != len(controls):
        raise ValueError(f"control values repeat in one sweep: {controls.tolist()}")
    order = np.argsort(controls)
    return controls[order], [c[order] for c in curves]


def monotonicity(controls, values):
    """Spearman's rho of the control with the metric; NaN for a flat metric."""
    controls, (values,) = _sorted_sweep(controls, values)
    if np.all(values == values[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(controls, values).statistic)


def largest_jump(controls, values):
    """Steepest neighbouring step over the mean rate (>= 1); NaN for a flat metric."""
    controls, (values,) = _sorted_sweep(controls, values)
    steps = np.abs(np.diff(values))
    total = steps.sum()
    if total == 0:
        return math.nan
    mean_rate = total / (controls[-1] - controls[0])
    return float((steps / np.diff(controls)).max() / mean_rate)


def front_area(clip_t, clip_i, reference=(0.0, 0.0)):
    """Area of the (CLIP-T, CLIP-I) plane dominated by the points, from the reference point."""
    t = np.maximum(np.asarray(clip_t, dtype=np.float64) - reference[0], 0.0)
    i = np.maximum(np.asarray(clip_i, dtype=np.float64) - reference[1], 0.0)
    if t.shape != i.shape or t.ndim != 1:
        raise ValueError(f"one CLIP-T and one CLIP-I per point, got {t.shape} and {i.shape}")
    area, covered = 0.0, 0.0
    for k in np.argsort(-t, kind="stable"):  # widest rectangle first; each adds its part above the others
        if i[k] > covered:
            area += t[k] * (i[k] - covered)
            covered = i[k]
    return float(area)


def sweep_smoothness(controls, clip_i, clip_t, reference=(0.0, 0.0)):
    """All the numbers of one sweep, by name."""
    return {
        "rho_clip_i": monotonicity(controls, clip_i),
        "rho_clip_t": monotonicity(controls, clip_t),
        "jump_clip_i": largest_jump(controls, clip_i),
        "jump_clip_t": largest_jump(controls, clip_t),
        "front_area": front_area(clip_t, clip_i, reference),
    }
