"""Configurations: every size and feature choice a weight file depends on.

A configuration is stored in each weight file's metadata, so a file always rebuilds the
module it was trained as.
"""
from dataclasses import asdict, dataclass, field

# SD1.5's 16 cross-attention layers as ComfyUI keys its attn2 patches
# (block name, block index, transformer index), each with its attention's inner width.
SD15_LAYERS = (
    (("input", 1, 0), 320), (("input", 2, 0), 320),
    (("input", 4, 0), 640), (("input", 5, 0), 640),
    (("input", 7, 0), 1280), (("input", 8, 0), 1280),
    (("middle", 0, 0), 1280),
    (("output", 3, 0), 1280), (("output", 4, 0), 1280), (("output", 5, 0), 1280),
    (("output", 6, 0), 640), (("output", 7, 0), 640), (("output", 8, 0), 640),
    (("output", 9, 0), 320), (("output", 10, 0), 320), (("output", 11, 0), 320),
)

# The injection formula of the design document (decoupled cross-attention, blended outputs).
INJECTION_DECOUPLED_BLEND = "decoupled-blend-v1"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """Which output of an image encoder FlexIP reads, at what input size and normalisation.

    feature: for CLIP "image_embeds" (the projected [CLS], the global identity descriptor)
    or "penultimate_cls" (the [CLS] of the second-to-last layer); for DINOv2 "patch_tokens"
    (the last layer's normed patch tokens, [CLS] dropped).
    """
    feature: str
    dim: int
    resolution: int
    mean: tuple = field(default=CLIP_MEAN)
    std: tuple = field(default=CLIP_STD)


@dataclass(frozen=True)
class FlexIPConfig:
    name: str
    width: int               # shared width d of all resamplers
    depth: int               # perceiver blocks per resampler
    heads: int
    ff_mult: int
    num_latent_queries: int  # N_L learnable queries of the preservation adapter
    num_clip_tokens: int     # N_C tokens the CLIP [CLS] embedding is mapped to
    text_dim: int            # width of the base model's text conditioning
    context_dim: int         # width of the UNet's cross-attention context
    clip: EncoderSpec
    dino: EncoderSpec
    layers: tuple            # ((block, index, transformer_index), inner_dim) per cross-attention
    injection: str = INJECTION_DECOUPLED_BLEND

    @property
    def dim_head(self):
        return self.width // self.heads

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["clip"] = EncoderSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["clip"].items()})
        d["dino"] = EncoderSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["dino"].items()})
        d["layers"] = tuple((tuple(key), inner) for key, inner in d["layers"])
        return cls(**d)


SD15 = FlexIPConfig(
    name="sd15", width=768, depth=4, heads=12, ff_mult=4,
    num_latent_queries=16, num_clip_tokens=4, text_dim=768, context_dim=768,
    # CLIP ViT-H/14 (laion2B): image_embeds 1024-d, hidden 1280-d, at 224 px.
    clip=EncoderSpec("image_embeds", 1024, 224),
    # DINOv2-L/14 at 224 px: 16 x 16 = 256 patch tokens of 1024-d.
    dino=EncoderSpec("patch_tokens", 1024, 224, IMAGENET_MEAN, IMAGENET_STD),
    layers=SD15_LAYERS,
)

# Small enough for exact unit tests in milliseconds; same structure as sd15.
TINY = FlexIPConfig(
    name="tiny", width=32, depth=2, heads=4, ff_mult=2,
    num_latent_queries=4, num_clip_tokens=2, text_dim=24, context_dim=24,
    clip=EncoderSpec("image_embeds", 16, 28),
    dino=EncoderSpec("patch_tokens", 20, 28, IMAGENET_MEAN, IMAGENET_STD),
    layers=((("input", 1, 0), 16), (("middle", 0, 0), 32), (("output", 11, 0), 16)),
)

CONFIGS = {c.name: c for c in (SD15, TINY)}
