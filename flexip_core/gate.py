"""The training-time gate of dynamic weight gating (paper, section 3.3).

gamma(x) = alpha for samples from image data sets (reference and target are one image:
preservation should dominate) and 1 - beta for samples from video / multi-view data sets
(reference and target differ: personalization should dominate). alpha and beta are learned,
kept in [0, 1] by a sigmoid, and start near 1. At inference gamma is the user's control.

sampled_gamma is the alternative this project measures (benchmarks/nano, issue 15): gamma drawn per
sample over the whole range rather than learned per data set, so that training sees every gamma
the user can set, the middle included.
"""
import math

import torch
from torch import nn

INITIAL_ALPHA_BETA = 0.9


class TrainingGate(nn.Module):
    def __init__(self, initial=INITIAL_ALPHA_BETA):
        super().__init__()
        if not 0.0 < initial < 1.0:
            raise ValueError(f"initial alpha/beta must lie strictly between 0 and 1, got {initial}")
        logit = math.log(initial / (1.0 - initial))
        self.alpha_logit = nn.Parameter(torch.tensor(logit))
        self.beta_logit = nn.Parameter(torch.tensor(logit))

    @property
    def alpha(self):
        return torch.sigmoid(self.alpha_logit)

    @property
    def beta(self):
        return torch.sigmoid(self.beta_logit)

    def forward(self, is_video):
        """is_video: bool tensor [B] -> gamma [B]."""
        return torch.where(is_video, 1.0 - self.beta, self.alpha)


def sampled_gamma(u, is_video):
    """gamma per sample from uniform draws u [B] in [0, 1): Beta(2, 1) (density 2 gamma) for image
    samples, Beta(1, 2) (density 2 (1 - gamma)) for video / multi-view ones, by inverting their CDFs.

    With the 1:1 image / video sampler this is the joint law of "draw gamma ~ U(0, 1), then take the
    reference itself as the target with probability gamma, else the other view": P(gamma, same) =
    gamma and P(gamma, other) = 1 - gamma, each kind half of the samples."""
    root = torch.sqrt(u)
    return torch.where(is_video, 1.0 - root, root)
