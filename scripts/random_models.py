"""Full-shape, random-initialised model files in the formats users actually have.

For tests and the demo, where no real weights can be downloaded. Each file is built once and
cached under .host/models/<ComfyUI models folder>/ (git-ignored); the name carries a recipe
version so a changed recipe rebuilds it.

Traps these files avoid (see shared/host.md): values are rounded to float16 so ComfyUI's
float16 storage loses nothing; DINOv2 is saved with the hub's tensor names, which ComfyUI
expects, not transformers 5's; every normalisation weight is non-zero.
"""
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / ".host" / "models"
RECIPE = "v1"


def _cached(folder, name, build):
    path = MODELS / folder / f"{name}.random-{RECIPE}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        save_file(_fp16_exact(build()), tmp)
        os.replace(tmp, path)
    return path


def _fp16_exact(sd):
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}


def _check_norms(sd):
    zero = [k for k, v in sd.items() if ("norm" in k or "ln" in k) and k.endswith("weight") and not v.any()]
    assert not zero, f"zeroed normalisation weights would make every output equal: {zero[:5]}"
    return sd


def clip_vit_h(seed=0):
    """HF CLIPVisionModelWithProjection, ViT-H/14 shapes (laion2B's image encoder)."""
    def build():
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        torch.manual_seed(seed)
        config = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                  num_attention_heads=16, patch_size=14, image_size=224,
                                  projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
        return _check_norms(CLIPVisionModelWithProjection(config).state_dict())
    return _cached("clip_vision", "CLIP-ViT-H-14", build)


def dinov2_large(seed=1):
    """HF Dinov2Model, large, saved with the hub's tensor names."""
    def build():
        from transformers import Dinov2Config, Dinov2Model

        from flexip_core.encoders import DINOV2_HUB_TO_TRANSFORMERS5, DINOV2_LARGE
        torch.manual_seed(seed)
        sd = Dinov2Model(Dinov2Config(**DINOV2_LARGE)).state_dict()
        for hub, new in DINOV2_HUB_TO_TRANSFORMERS5:
            sd = {k.replace(new, hub): v for k, v in sd.items()}
        # transformers initialises these to zeros / constants; random values make the
        # parity tests see every part of the model.
        for k in sd:
            if k.endswith(("mask_token", "cls_token", "position_embeddings")):
                sd[k] = torch.randn_like(sd[k]) * 0.02
        return _check_norms(sd)
    return _cached("clip_vision", "dinov2-large", build)
