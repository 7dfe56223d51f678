"""The two adapters of FlexIP (paper, section 3).

Preservation: P = concat(Resampler_L(Z_L, Z_D), Resampler_C(Z_C, Z_D)): learnable queries pick
fine detail from the DINOv2 patches, the CLIP [CLS] tokens keep the global identity.
Personalization: S = Resampler_T(Z_T, Z_C): every prompt token attends to the subject's look.
"""
import torch
from torch import nn

from .resampler import Resampler


class ClipTokens(nn.Module):
    """Map the CLIP [CLS] embedding [B, clip_dim] to N_C tokens of the shared width: Z(C)."""

    def __init__(self, clip_dim, num_tokens, width):
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(clip_dim, num_tokens * width)
        self.norm = nn.LayerNorm(width)

    def forward(self, clip_embeds):
        return self.norm(self.proj(clip_embeds).unflatten(-1, (self.num_tokens, -1)))


def _resampler(config, memory_dim):
    return Resampler(config.width, config.depth, config.heads, config.ff_mult,
                     memory_dim, config.context_dim)


class PreservationAdapter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.latent_queries = nn.Parameter(torch.randn(1, config.num_latent_queries, config.width) * config.width ** -0.5)
        self.clip_tokens = ClipTokens(config.clip.dim, config.num_clip_tokens, config.width)
        self.resampler_latent = _resampler(config, config.dino.dim)
        self.resampler_clip = _resampler(config, config.dino.dim)

    def forward(self, clip_embeds, dino_patches):
        """clip_embeds [B, clip_dim], dino_patches [B, M, dino_dim] -> P [B, N_L + N_C, context_dim]."""
        queries = self.latent_queries.expand(dino_patches.shape[0], -1, -1)
        detail = self.resampler_latent(queries, dino_patches)
        identity = self.resampler_clip(self.clip_tokens(clip_embeds), dino_patches)
        return torch.cat((detail, identity), dim=1)


class PersonalizationAdapter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.clip_tokens = ClipTokens(config.clip.dim, config.num_clip_tokens, config.width)
        self.text_in = nn.Linear(config.text_dim, config.width)
        self.resampler_text = _resampler(config, config.width)

    def forward(self, text_embeds, clip_embeds):
        """text_embeds [B, N_T, text_dim] (any N_T), clip_embeds [B, clip_dim] or, for several
        references, [B, R, clip_dim] -> S [B, N_T, context_dim]."""
        subject = self.clip_tokens(clip_embeds)
        if subject.ndim == 4:  # [B, R, N_C, width]: the text attends to all references' tokens
            subject = subject.flatten(1, 2)
        return self.resampler_text(self.text_in(text_embeds), subject)
