"""Tiny random evaluation models saved in the formats users have, for tests that must run in
seconds: an open_clip folder (both towers, 768-d embeddings so it can feed the aesthetic head),
a hub-format DINOv2 file and an aesthetic head file.

The CLIP preprocessing mean and std are deliberately unlike CLIP's, so a loader that ignores
the folder's preprocess_cfg gives other numbers.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_CLIP_CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_MEAN = (0.30, 0.45, 0.60)
TINY_CLIP_STD = (0.20, 0.25, 0.35)
TINY_DINO = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8,
                 image_size=32, layer_norm_eps=1e-6, layerscale_value=1.0)


def _randomise_small_tensors(state, generator):
    """Tokens and embeddings that initialise to zero or constants get random values, so every
    part of the model moves the output."""
    for k, v in state.items():
        if k.endswith(("cls_token", "mask_token", "position_embeddings", "class_embedding", "lambda1")):
            state[k] = v + 0.1 * torch.randn(v.shape, generator=generator)
    return state


def tiny_open_clip(folder, seed=0):
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP_CONFIG,
        "preprocess_cfg": {"mean": list(TINY_CLIP_MEAN), "std": list(TINY_CLIP_STD)}}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False)
    state = _randomise_small_tensors(dict(model.state_dict()), torch.Generator().manual_seed(seed))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    return folder


def tiny_dinov2(path, seed=1):
    """Saved with the hub's tensor names, as ComfyUI and the hub have them."""
    from transformers import Dinov2Config, Dinov2Model

    from flexip_core.encoders import DINOV2_HUB_TO_TRANSFORMERS5
    torch.manual_seed(seed)
    state = Dinov2Model(Dinov2Config(**TINY_DINO)).state_dict()
    for hub, new in DINOV2_HUB_TO_TRANSFORMERS5:
        state = {k.replace(new, hub): v for k, v in state.items()}
    state = _randomise_small_tensors(state, torch.Generator().manual_seed(seed))
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return Path(path)


def tiny_aesthetic_head(path, seed=2):
    """The published head's shapes (it is already small) with random values: .safetensors or .pth."""
    from flexip_core.aesthetic import AestheticHead

    torch.manual_seed(seed)
    state = AestheticHead().state_dict()
    if str(path).endswith(".pth"):
        torch.save(state, path)
    else:
        save_file(state, path)
    return Path(path)


# DINO v1 ViT-S at full shape (21 M parameters: cheap), as facebook/dino-vits16 and -vits8 are laid out.
DINO_VIT_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                  image_size=224, qkv_bias=True, layer_norm_eps=1e-6)


def dino_v1_folder(folder, patch=16, seed=3):
    """A hub-format DINO v1 folder (config.json + model.safetensors with the hub's tensor names),
    random weights; returns (folder, the model as built in memory)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    model = ViTModel(ViTConfig(**DINO_VIT_S, patch_size=patch), add_pooling_layer=False).eval()
    model.save_pretrained(folder)  # transformers writes the hub's names (attention.attention.query ...)
    return Path(folder), model


def open_clip_state_dict_file(path, architecture, seed=4):
    """A built-in open_clip architecture with random weights, saved as a safetensors state dict
    (half precision, as published files are); returns the path."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(architecture, pretrained=None, load_weights=False,
                                   pretrained_image=False, pretrained_text=False)
    state = _randomise_small_tensors(dict(model.state_dict()), torch.Generator().manual_seed(seed))
    save_file({k: v.half().contiguous() for k, v in state.items()}, path)
    return Path(path)
