"""A subject's reference features, one or several images, and how they become P and S.

Several references combine by "average" (one mean feature set: the adapters see one image)
or "concat" (each reference gives its own P tokens, and the prompt attends to every
reference's [CLS] tokens). The "dropped" reference, all zeros, is what training shows the
adapters when it drops the image; the uncond pass under CFG uses it.
"""
from dataclasses import dataclass

import torch

COMBINES = ("average", "concat")


@dataclass(frozen=True)
class ReferenceFeatures:
    clip_embeds: torch.Tensor   # [R, clip_dim]
    dino_patches: torch.Tensor  # [R, M, dino_dim]
    combine: str = "average"

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        if self.clip_embeds.shape[0] != self.dino_patches.shape[0] or self.clip_embeds.shape[0] == 0:
            raise ValueError(f"need one or more references with both features, got {self.clip_embeds.shape[0]} "
                             f"CLIP and {self.dino_patches.shape[0]} DINOv2")

    def to(self, device):
        return ReferenceFeatures(self.clip_embeds.to(device), self.dino_patches.to(device), self.combine)

    def dropped(self):
        return ReferenceFeatures(torch.zeros_like(self.clip_embeds), torch.zeros_like(self.dino_patches), self.combine)

    def combined(self):
        if self.combine == "average":
            return self.clip_embeds.mean(0, keepdim=True), self.dino_patches.mean(0, keepdim=True)
        return self.clip_embeds, self.dino_patches


def preservation_tokens(adapter, reference):
    """P for one subject: [1, N_P, context] (N_P = (N_L + N_C) per reference when concatenated)."""
    clip, dino = reference.combined()
    return adapter(clip, dino).flatten(0, 1).unsqueeze(0)


def personalization_tokens(adapter, text_embeds, reference):
    """S for one prompt [1, N_T, text_dim] and one subject: [1, N_T, context]."""
    clip, _ = reference.combined()
    return adapter(text_embeds, clip.unsqueeze(0))
