"""The training-time gate of dynamic weight gating (paper, section 3.3).

gamma(x) = alpha for samples from image data sets (reference and target are one image:
preservation should dominate) and 1 - beta for samples from video / multi-view data sets
(reference and target differ: personalization should dominate). alpha and beta are learned,
kept in [0, 1] by a sigmoid, and start near 1. At inference gamma is the user's control.
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
