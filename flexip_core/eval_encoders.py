"""The encoders the evaluation metrics read, built from local files only (never a download).

CLIP (CLIP-I, CLIP-T, CLIP-IQA, and the aesthetic head's input), open_clip, from one of:
- a folder laid out as open_clip's hub repositories are (open_clip_config.json beside
  open_clip_model.safetensors), e.g. a copy of laion/CLIP-ViT-H-14-laion2B-s32B-b79K;
- a built-in open_clip architecture name (ViT-H-14, ViT-L-14-quickgelu for OpenAI's weights, ...)
  and a safetensors file of that model's state dict;
- the HF-format CLIP ViT-H/14 image encoder ComfyUI users keep in models/clip_vision (image tower
  only: CLIP-I and the aesthetic score, no CLIP-T or CLIP-IQA).
Text uses open_clip's bundled tokenizer; architectures that need a tokenizer or tower from the
Hugging Face hub (hf_model_name) are refused, since they would download.

DINO (DINO-I), the [CLS] token of the last layer after the final norm, from one of:
- DINO v1 (the DreamBooth metric: ViT-S/16; DreamBench++ also reports ViT-S/8): transformers'
  ViTModel from a hub-format folder (config.json beside model.safetensors, as facebook/dino-vits16
  is laid out). Pixels as DINO's own evaluation prepares them: the shorter side resized to 256 px
  (bicubic), the central 224 px square, ImageNet mean and std.
- DINOv2 of any size (small, base, large, giant): transformers' Dinov2Model from a hub-format
  safetensors file, its configuration read from the tensor shapes.

Pixels (CLIP, DINOv2) come from preprocess.preprocess_reference: the central square (or the whole
image for "stretch"), resized to the encoder's resolution, normalised with its mean and std.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
from .encoders import DINOV2_HUB_TO_TRANSFORMERS5, load_open_clip_vit_h
from .preprocess import preprocess_reference, preprocess_resize_crop

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"
# DINO v1 backbones by name: (width, patch). The names are DINO's own (dino_vits16 ...).
DINO_V1_BACKBONES = {"dino-vits16": (384, 16), "dino-vits8": (384, 8), "dino-vitb16": (768, 16), "dino-vitb8": (768, 8)}
# DINO's evaluation transform: the shorter side to 256 px, then the central 224 px.
DINO_V1_RESIZE, DINO_V1_RESOLUTION = 256, 224
VIT_SIZES = {384: "S", 768: "B", 1024: "L", 1280: "H", 1536: "g", 1664: "bigG"}


def vit_name(width, patch):
    """ViT-S/16 and the like, from the width and the patch size."""
    return f"ViT-{VIT_SIZES.get(width, f'w{width}')}/{patch}"


def pixels(images, spec, masks=None, crop="center", resize=None):
    """A list of [H, W, C] images in [0, 1] (sizes may differ), with optional [H, W] masks
    (0 = background, painted grey), -> [B, 3, S, S] for the encoder described by spec.
    resize: DINO's evaluation transform instead (shorter side to resize px, central crop)."""
    masks = masks if masks is not None else [None] * len(images)
    return torch.cat([preprocess_reference(image[None], spec, crop, None if mask is None else mask[None])
                      if resize is None else
                      preprocess_resize_crop(image[None], spec, resize, None if mask is None else mask[None])
                      for image, mask in zip(images, masks)])


@dataclass
class ClipEncoder:
    """An open_clip model: name says which file, backbone which architecture (open_clip's name, or
    "custom ..." for a folder of another shape), for reports; text is None for an image-only tower."""
    name: str
    image_tower: torch.nn.Module
    spec: EncoderSpec
    text_model: torch.nn.Module = None
    tokenizer: object = None
    crop: str = "center"
    backbone: str = ""

    @property
    def has_text(self):
        return self.text_model is not None

    def to(self, device):
        self.image_tower.to(device)
        if self.text_model is not None:
            self.text_model.to(device)
        return self

    @torch.no_grad()
    def images(self, images, masks=None):
        device = next(self.image_tower.parameters()).device
        return self.image_tower(pixels(images, self.spec, masks, self.crop).to(device)).float()

    @torch.no_grad()
    def texts(self, texts):
        if not self.has_text:
            raise ValueError(f"the CLIP model {self.name} has no text tower: CLIP-T and CLIP-IQA need an "
                             "open_clip checkpoint with both towers")
        device = next(self.text_model.parameters()).device
        return self.text_model.encode_text(self.tokenizer(list(texts)).to(device)).float()


class _ImageTower(torch.nn.Module):
    """open_clip CLIP.encode_image as a module (the visual tower plus nothing else)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.encode_image(x)


def load_open_clip(path, model=None, hf_vision=False):
    """A ClipEncoder from local files; see the module's docstring for the three layouts.

    model: the open_clip architecture (ViT-B-32, ViT-L-14, ViT-H-14 ...): needed for a state-dict
    file; for a folder, which carries its own configuration, checked against it when given."""
    import open_clip

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP model file or folder not found: {path}")
    if hf_vision:
        if model not in (None, "ViT-H-14"):
            raise ValueError(f"format = \"hf-vision\" reads ComfyUI's CLIP ViT-H/14 image encoder, not {model}")
        visual = load_open_clip_vit_h(path)
        return ClipEncoder(f"open_clip ViT-H-14 image tower from HF file {path.name}", visual,
                           EncoderSpec("image_embeds", visual.output_dim, 224), backbone="ViT-H-14")
    if path.is_dir():
        if not (path / OPEN_CLIP_CONFIG).is_file():
            raise FileNotFoundError(f"{path} has no {OPEN_CLIP_CONFIG}: give an open_clip folder, or a safetensors "
                                    "file together with an open_clip model name")
        config = json.loads((path / OPEN_CLIP_CONFIG).read_text())
        model_cfg, preprocess_cfg = config["model_cfg"], config.get("preprocess_cfg", {})
        weights, architecture = _single_safetensors(path), f"local-dir:{path}"
        backbone = open_clip_backbone(model_cfg)
        if model and model != backbone:
            raise ValueError(f"{path} holds {backbone} (its {OPEN_CLIP_CONFIG}), not {model}")
        name = f"open_clip {path.name} ({weights.name})"
    else:
        if not model:
            raise ValueError(f"{path} is a file: say which open_clip architecture it holds (model = \"ViT-H-14\")")
        model_cfg = open_clip.get_model_config(model)
        if model_cfg is None:
            raise ValueError(f"{model!r} is not an open_clip architecture (open_clip.list_models() lists them)")
        preprocess_cfg, weights, architecture, backbone = model_cfg.get("preprocess_cfg", {}), path, model, model
        name = f"open_clip {model} ({path.name})"
    for tower, key in (("text_cfg", "hf_model_name"), ("text_cfg", "hf_tokenizer_name"), ("vision_cfg", "timm_model_name")):
        if model_cfg.get(tower, {}).get(key):
            raise ValueError(f"{name} needs {model_cfg[tower][key]!r} from the Hugging Face hub, which the "
                             "evaluation never downloads: use a CLIP with open_clip's own towers")
    # With no weights to load and no pretrained towers, open_clip only builds the architecture.
    clip = open_clip.create_model(architecture, pretrained=None, load_weights=False,
                                  pretrained_image=False, pretrained_text=False)
    state = load_file(weights)
    mismatch = _key_mismatch(clip, state)
    if mismatch:
        raise ValueError(f"{weights} does not match {name}: {mismatch}")
    clip.load_state_dict(state)
    clip.eval()
    spec = EncoderSpec("image_embeds", model_cfg["embed_dim"], clip.visual.image_size[0],
                       tuple(preprocess_cfg.get("mean", CLIP_MEAN)), tuple(preprocess_cfg.get("std", CLIP_STD)))
    return ClipEncoder(name, _ImageTower(clip), spec, clip, open_clip.get_tokenizer(architecture), backbone=backbone)


def open_clip_backbone(model_cfg):
    """open_clip's name of the built-in architecture a folder's model_cfg is, else 'custom ViT-.../..'."""
    import open_clip

    parts = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")
    for name in open_clip.list_models():
        known = open_clip.get_model_config(name)
        if known and all(known.get(k) == model_cfg.get(k) for k in parts):
            return name
    vision = model_cfg["vision_cfg"]
    return f"custom {vit_name(vision['width'], vision['patch_size'])} ({vision['layers']} layers, " \
           f"{vision['image_size']} px, {model_cfg['embed_dim']}-d)"


def _single_safetensors(folder):
    if (folder / OPEN_CLIP_WEIGHTS).is_file():
        return folder / OPEN_CLIP_WEIGHTS
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder} must hold {OPEN_CLIP_WEIGHTS} (or exactly one .safetensors file); "
                                f"found {[f.name for f in found]}. A .bin/.pt checkpoint is never unpickled: "
                                "convert it to safetensors")
    return found[0]


def _key_mismatch(module, state):
    """'' when state fits module exactly, else what is missing, misshapen and unexpected (5 of each)."""
    expected = module.state_dict()
    parts = {
        "missing": sorted(k for k in expected if k not in state),
        "wrong shape": sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
                              for k, v in expected.items() if k in state and state[k].shape != v.shape),
        "unexpected": sorted(k for k in state if k not in expected),
    }
    return "; ".join(f"{what} {found[:5]}" + (f" and {len(found) - 5} more" if len(found) > 5 else "")
                     for what, found in parts.items() if found)


@dataclass
class DinoEncoder:
    """A DINO: name says which file, backbone which model (DINO ViT-S/16, DINOv2-L/14 ...).
    resize: DINO's evaluation transform (shorter side to resize px, central crop); None: the
    central square resized (preprocess_reference)."""
    name: str
    model: torch.nn.Module
    spec: EncoderSpec = field(default_factory=lambda: EncoderSpec("cls", 0, 224, IMAGENET_MEAN, IMAGENET_STD))
    crop: str = "center"
    backbone: str = ""
    resize: int = None

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def images(self, images, masks=None):
        """The [CLS] token of the last layer after the final norm, [B, width]."""
        device = next(self.model.parameters()).device
        x = pixels(images, self.spec, masks, self.crop, self.resize).to(device)
        return self.model(pixel_values=x).last_hidden_state[:, 0].float()


def load_dino_v1(path, backbone=None, resolution=DINO_V1_RESOLUTION, resize=DINO_V1_RESIZE):
    """A DinoEncoder of DINO v1 (transformers' ViTModel) from a hub-format folder: config.json beside
    model.safetensors (path: the folder or that file). backbone (dino-vits16 ...), when given, must
    be what the file holds."""
    from safetensors import safe_open
    from transformers import ViTConfig, ViTModel

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise FileNotFoundError(f"DINO model folder or file not found: {path}")
    if path.is_file() and path.name != HUB_WEIGHTS or not (folder / HUB_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: DINO v1 is read from a hub-format folder holding {HUB_CONFIG} and "
                                f"{HUB_WEIGHTS} (a pytorch_model.bin is never unpickled: convert it to safetensors)")
    if not (folder / HUB_CONFIG).is_file():
        raise FileNotFoundError(f"{folder} has no {HUB_CONFIG} beside {HUB_WEIGHTS} (copy it from the model's hub page)")
    config = ViTConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type != "vit":
        raise ValueError(f"{folder / HUB_CONFIG} describes a {config.model_type!r} model; DINO v1 is a 'vit'")
    with safe_open(folder / HUB_WEIGHTS, "pt") as f:  # shapes only: checked before anything is built
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if "embeddings.cls_token" not in shapes or "embeddings.patch_embeddings.projection.weight" not in shapes:
        raise ValueError(f"{folder / HUB_WEIGHTS} is not a hub-format ViT (no embeddings.cls_token)")
    width, patch = shapes["embeddings.cls_token"][-1], shapes["embeddings.patch_embeddings.projection.weight"][-1]
    if (width, patch) != (config.hidden_size, config.patch_size):
        raise ValueError(f"{folder}: {HUB_CONFIG} says width {config.hidden_size}, patch {config.patch_size}; "
                         f"the weights are width {width}, patch {patch}")
    found = f"DINO {vit_name(width, patch)}"
    if backbone is not None:
        if backbone not in DINO_V1_BACKBONES:
            raise ValueError(f"unknown DINO v1 backbone {backbone!r} (known: {', '.join(DINO_V1_BACKBONES)})")
        if DINO_V1_BACKBONES[backbone] != (width, patch):
            raise ValueError(f"{folder} holds {found}, not {backbone}")
    model, info = ViTModel.from_pretrained(folder, add_pooling_layer=False, use_safetensors=True,
                                           local_files_only=True, dtype=torch.float32, output_loading_info=True)
    # The hub's DINO files carry no pooler (their models were saved without one); any other gap is an error.
    problems = {what: [k for k in info.get(what, ()) if not str(k).startswith("pooler.")]
                for what in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {what: keys for what, keys in problems.items() if keys}
    if problems:
        raise ValueError(f"{folder / HUB_WEIGHTS} does not match its {HUB_CONFIG}: {problems}")
    name = f"{found} from {folder.name}/{HUB_WEIGHTS}, [CLS] at {resolution} px (shorter side {resize} px, central crop)"
    return DinoEncoder(name, model.eval(), EncoderSpec("cls", width, resolution, IMAGENET_MEAN, IMAGENET_STD),
                       backbone=found, resize=resize)


def dinov2_config(state, heads=None):
    """Dinov2Config keyword arguments read from a hub-format state dict's shapes.

    heads is not in the shapes: every published DINOv2 uses 64-wide heads, the default.
    """
    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")})
    swiglu = "encoder.layer.0.mlp.weights_in.weight" in state
    # giant's SwiGLU width is derived from mlp_ratio 4 with a rounding rule; the others store it.
    mlp_ratio = 4 if swiglu else state["encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads or hidden // 64,
                mlp_ratio=mlp_ratio, patch_size=patch, image_size=grid * patch, layer_norm_eps=1e-6,
                layerscale_value=1.0, use_swiglu_ffn=swiglu)


def load_dinov2(path, heads=None, resolution=224):
    """A DinoEncoder from a hub-format DINOv2 safetensors file (the names ComfyUI loads)."""
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DINOv2 file not found: {path}")
    state = load_file(path)
    if "embeddings.cls_token" not in state:
        raise ValueError(f"{path} is not a hub-format DINOv2 file (no embeddings.cls_token)")
    if any(new in k for k in state for _, new in DINOV2_HUB_TO_TRANSFORMERS5):
        raise ValueError(f"{path} has transformers-5 tensor names (attention.q_proj ...); ComfyUI cannot load it "
                         "and neither does the evaluation: use the hub's model.safetensors")
    config = dinov2_config(state, heads)
    model = Dinov2Model(Dinov2Config(**config))
    if "encoder.layer.0.attention.q_proj.weight" in model.state_dict():
        for old, new in DINOV2_HUB_TO_TRANSFORMERS5:
            state = {k.replace(old, new): v for k, v in state.items()}
    mismatch = _key_mismatch(model, state)
    if mismatch:
        raise ValueError(f"{path} does not match the DINOv2 read from its shapes {config}: {mismatch}")
    model.load_state_dict(state)
    name = f"DINOv2 (width {config['hidden_size']}, {config['num_hidden_layers']} layers, patch {config['patch_size']}) " \
           f"from {path.name}, [CLS] at {resolution} px"
    backbone = "DINOv2-" + vit_name(config["hidden_size"], config["patch_size"])[4:]
    return DinoEncoder(name, model.eval(), EncoderSpec("cls", config["hidden_size"], resolution,
                                                       IMAGENET_MEAN, IMAGENET_STD), backbone=backbone)
