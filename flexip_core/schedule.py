"""Gamma schedules: gamma over the sampling and over the UNet's blocks, instead of one number.

    gamma(t, block) = m_block * (start + (end - start) * c(t))

t is the fraction of the sampling a step is at (0 at the first step, 1 at the last), counted by
its sigma as the model's own percent_to_sigma counts it (GatedApply's start_at / end_at count
the same way). c is the curve: linear c(t) = t, or cosine c(t) = (1 - cos(pi t)) / 2, which
stays near start and near end longer. m_block in [0, 1] scales the input, middle and output
blocks: with start = end = 1 the three multipliers are the blocks' gammas. Every value lies in
[0, 1] without clamping.
"""
import bisect
import math
from dataclasses import dataclass

BLOCKS = ("input", "middle", "output")
CURVES = {"linear": lambda t: t,
          "cosine": lambda t: (1.0 - math.cos(math.pi * t)) / 2.0}


@dataclass(frozen=True)
class GammaSchedule:
    start: float          # gamma at the first step (t = 0)
    end: float            # gamma at the last step (t = 1)
    curve: str = "linear"
    blocks: tuple = (1.0, 1.0, 1.0)  # multipliers m of the input, middle and output blocks

    def __post_init__(self):
        for name, value in (("start", self.start), ("end", self.end), *zip(BLOCKS, self.blocks)):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:  # NaN fails too
                raise ValueError(f"{name} = {value!r} is not a number from 0 to 1")
        if len(self.blocks) != len(BLOCKS):
            raise ValueError(f"{len(self.blocks)} block multipliers; one per block of {BLOCKS}")
        if self.curve not in CURVES:
            raise ValueError(f"curve {self.curve!r} is not one of {sorted(CURVES)}")

    def gamma(self, fraction, block):
        """gamma at `fraction` of the sampling (clamped to [0, 1]) in `block` ('input', 'middle', 'output')."""
        t = min(max(fraction, 0.0), 1.0)
        return self.blocks[BLOCKS.index(block)] * (self.start + (self.end - self.start) * CURVES[self.curve](t))


class SigmaFractions:
    """sigma -> the fraction of the sampling, the inverse of a model's percent_to_sigma.

    The table holds log percent_to_sigma(j / (points - 1)); a sigma between two entries is placed
    linearly in log sigma between their fractions. For SD1.5's 1000-step discrete schedule with
    points = 1000 the entries are its own sigmas, and percent_to_sigma interpolates log sigma
    linearly between them, so the inverse is exact. Sigmas from the first entry up give 0, from
    the last down 1 (percent_to_sigma(0) and (1) are sentinels, 1e9 and 0).
    """

    def __init__(self, percent_to_sigma, points=1000):
        self.fractions = [j / (points - 1) for j in range(points)]
        # Negated log sigmas, ascending (sigma falls as the sampling goes on), for bisect. The two
        # ends are read just inside, away from the sentinels, and keep their exact fractions 0 and 1.
        self.log_sigmas = [-math.log(percent_to_sigma(min(max(f, 1e-9), 1.0 - 1e-9))) for f in self.fractions]
        if any(b <= a for a, b in zip(self.log_sigmas, self.log_sigmas[1:])):
            raise ValueError("percent_to_sigma is not strictly decreasing")

    def __call__(self, sigma):
        x = -math.log(sigma) if sigma > 0 else math.inf
        i = bisect.bisect_right(self.log_sigmas, x)
        if i == 0:
            return 0.0
        if i == len(self.log_sigmas):
            return 1.0
        a, b = self.log_sigmas[i - 1], self.log_sigmas[i]
        return self.fractions[i - 1] + (x - a) / (b - a) * (self.fractions[i] - self.fractions[i - 1])


class SigmaSchedule:
    """A GammaSchedule read by sigma: what a GatedAttention patch calls as schedule(sigma, block)."""

    def __init__(self, schedule, fraction_of_sigma):
        self.schedule, self.fraction_of_sigma = schedule, fraction_of_sigma

    def __call__(self, sigma, block):
        return self.schedule.gamma(self.fraction_of_sigma(sigma), block)
