"""What a FlexIP training step computes (paper, section 3.3 and appendix B.1), in plain PyTorch.

- Classifier-free-guidance dropout: per sample, drop the text, the image or both, exactly as the
  nodes' uncond pass sees them: a dropped prompt is the empty prompt's embedding (for the UNet's
  own attention and for S alike), a dropped image is the all-zero reference (P from zeros, S from
  a zeroed [CLS]).
- TrainingConditioner: reference features and prompt -> the per-layer K/V of both branches and the
  gate's per-sample gamma; GatedAttention patches (flexip_core.patch) carry them into the UNet.
- The loss: epsilon-prediction MSE, computed from the host's denoised prediction, optionally
  weighted toward the subject by a mask of the target (subject_loss_weight).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .injection import COND
from .patch import GatedAttention


@dataclass(frozen=True)
class CFGDropout:
    """Probabilities of dropping only the text, only the image, or both (disjoint events)."""
    text: float = 0.05
    image: float = 0.05
    both: float = 0.05

    def __post_init__(self):
        values = (self.text, self.image, self.both)
        if any(not 0.0 <= p <= 1.0 for p in values) or sum(values) > 1.0:
            raise ValueError(f"CFG dropout probabilities must be in [0, 1] and sum to at most 1, got {values}")

    def decide(self, u):
        """(drop_text, drop_image): bool tensors [B], from one uniform draw u [B] per sample."""
        both = u < self.both
        text_only = (u >= self.both) & (u < self.both + self.text)
        image_only = (u >= self.both + self.text) & (u < self.both + self.text + self.image)
        return both | text_only, both | image_only


def split_timesteps(timesteps, is_variant, image_fraction):
    """Training timesteps [B] with image (invariant) samples' moved into the lowest `image_fraction`
    of the schedule (t -> floor(t * fraction): uniform there if t was uniform over all of it), where a
    picture's detail forms rather than its layout; video / multi-view samples keep theirs. 1: no change."""
    if image_fraction >= 1:
        return timesteps
    return torch.where(is_variant, timesteps, (timesteps * image_fraction).long())


def drop(values, dropped, replacement=None):
    """values [B, ...] with the rows where dropped [B] is True replaced (by zeros by default)."""
    mask = dropped.view(-1, *([1] * (values.ndim - 1)))
    return torch.where(mask, torch.zeros_like(values) if replacement is None else replacement, values)


class TrainingConditioner(nn.Module):
    """The trainable part of a step, one module so that DDP sees every parameter used in its forward."""

    def __init__(self, flexip):
        super().__init__()
        self.flexip = flexip

    def forward(self, clip_embeds, dino_patches, text_embeds, is_variant, gamma=None):
        """clip_embeds [B, clip_dim], dino_patches [B, M, dino_dim], text_embeds [B, N_T, text_dim]
        (dropout already applied), is_variant [B] bool -> ({layer key: ((K_P, V_P), (K_S, V_S))}, gamma [B]);
        gamma [B] given: those values instead of the training gate's."""
        p = self.flexip.preservation(clip_embeds, dino_patches)
        s = self.flexip.personalization(text_embeds, clip_embeds)
        kv = {key: self.flexip.projections[key](p, s) for key in self.flexip.projections.keys}
        return kv, self.flexip.gate(is_variant) if gamma is None else gamma


def training_patches(kv, gamma, attention):
    """attn2 replace patches for one training batch: every row is a COND row with its own P, S and gamma."""
    return {key: GatedAttention(key, {COND: kv_p}, {COND: kv_s}, gamma, 1.0, attention, cache_terms=False)
            for key, (kv_p, kv_s) in kv.items()}


def subject_loss_weight(mask, grid, subject_weight):
    """Per-pixel loss weights [B, 1, h, w] from target masks [B, H, W] in [0, 1] (1 = subject):
    subject_weight on the subject, 1 elsewhere (a fractional mask value in between), on the latent
    grid (h, w) by area averaging, and scaled to mean 1 per sample, so that every sample weighs as
    much as unweighted and only where its loss comes from changes (an all-ones or all-zeros mask
    gives all ones)."""
    mask = mask.to(torch.promote_types(mask.dtype, torch.float32))
    covered = F.interpolate(mask[:, None], size=tuple(grid), mode="area")
    weight = 1 + (subject_weight - 1) * covered
    return weight / weight.mean(dim=(1, 2, 3), keepdim=True)


def epsilon_loss(x0_pred, x0, sigma, v_prediction=False, weight=None):
    """MSE of the model's own output (epsilon, or v) from its denoised x0 prediction.

    With x = x0 + sigma * eps: eps_pred - eps = (x0 - x0_pred) / sigma, so the epsilon MSE is the x0
    error weighted by 1 / sigma^2 (v: (sigma^2 + 1) / sigma^2, ComfyUI's v-prediction with sigma_data 1).
    weight: per-element weights of the squared error, broadcastable to x0 (subject_loss_weight's
    [B, 1, h, w]); None: every element alike.
    """
    dtype = torch.promote_types(x0_pred.dtype, torch.float32)  # half precision is summed in float32
    sigma = sigma.to(dtype)
    noise_weight = sigma.pow(-2)
    if v_prediction:
        noise_weight = noise_weight * (sigma.pow(2) + 1)
    squared = (x0_pred.to(dtype) - x0.to(dtype)).pow(2)
    if weight is not None:
        try:
            fits = torch.broadcast_shapes(weight.shape, squared.shape) == squared.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"epsilon_loss: weight {tuple(weight.shape)} does not broadcast to x0 {tuple(x0.shape)}")
        squared = squared * weight.to(dtype)
    err = squared.flatten(1).mean(1)
    return (err * noise_weight).mean()
