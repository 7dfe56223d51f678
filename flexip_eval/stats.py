"""Means with a 95% interval, for the tables and the plots."""
import math

import numpy as np
from scipy.stats import t as student_t


def mean_ci(values):
    """(mean, half-width of the 95% Student-t interval, n) of the finite values; the half-width is
    NaN for fewer than two values."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) == 1:
        return float(v[0]), math.nan, 1
    return float(v.mean()), float(student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))), len(v)
