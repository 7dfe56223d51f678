"""Aesthetic score: the LAION improved-aesthetic-predictor head (Schuhmann, christophschuhmann/
improved-aesthetic-predictor, e.g. sac+logos+ava1-l14-linearMSE.pth).

A small MLP over the L2-normalised CLIP ViT-L/14 image embedding (768-d) that predicts the mean
human rating (1-10). The published head has no activations between its linear layers (they are
commented out in its source), only dropout, which is inactive at inference; the layer indices
below are the published tensor names (layers.0/2/4/6/7 .weight/.bias), so its file loads as is.

The head was trained on OpenAI's CLIP ViT-L/14 embeddings: feed it those (open_clip
ViT-L-14-quickgelu with OpenAI's weights); another 768-d CLIP gives numbers, not the published scale.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .pickle_sniff import read_pickle
from torch import nn

EMBED_DIM = 768


class AestheticHead(nn.Module):
    def __init__(self, embed_dim=EMBED_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, clip_image_embeds):
        """[B, 768] CLIP image embeddings (any norm) -> [B] predicted aesthetic scores."""
        if clip_image_embeds.shape[-1] != self.layers[0].in_features:
            raise ValueError(f"the aesthetic head reads {self.layers[0].in_features}-d CLIP ViT-L/14 embeddings, "
                             f"got {clip_image_embeds.shape[-1]}-d: configure a ViT-L/14 CLIP for it")
        return self.layers(F.normalize(clip_image_embeds, dim=-1)).squeeze(-1)


def load_aesthetic_head(path):
    """The head from a safetensors file, or the published .pth (read with torch.load(weights_only=True),
    which loads tensors and refuses any pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic head file not found: {path}")
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        # weights_only is only safe from torch 2.6 on, and the file is read first without unpickling:
        # a pickle that would import code is refused before torch.load sees it.
        if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
            raise ValueError(f"{path}: reading a pickled .pth needs torch >= 2.6 (older weights_only loading is "
                             "unsafe); convert the head to safetensors")
        summary = read_pickle(path)
        if summary.imports or not summary.complete:
            raise ValueError(f"{path} is not a plain tensor checkpoint (unpickling it would import "
                             f"{', '.join(summary.imports) or 'unknown code'}); convert the head to safetensors")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise ValueError(f"{path} could not be read as a tensor-only checkpoint ({e}); convert it to safetensors") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of the aesthetic head")
    head = AestheticHead()
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise ValueError(f"{path} is not the LAION aesthetic head: expected tensors {expected}, found {found}")
    head.load_state_dict(state)
    return head.eval()
