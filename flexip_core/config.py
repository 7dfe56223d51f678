"""Configurations: every size and feature choice a weight file depends on.

A configuration is stored in each weight file's metadata, so a file always rebuilds the
module it was trained as.
"""
import math
from dataclasses import asdict, dataclass, field, fields

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

# Bounds of every size a weight file may claim. A file is untrusted, and the meta device saves
# tensor memory, not Python objects (depth 10^8 would build 3 x 10^8 blocks). Each bound is several
# times what published adapters use (IP-Adapter's resamplers: width 768-1280, depth 4, 12-20 heads,
# 4-16 tokens; image encoders 1024-1536-d at 224-518 px; SDXL: 70 cross-attentions, inner widths up
# to 1280, context 2048), so research configurations fit, while the worst a file can ask for is
# built in seconds; the parameter bound (16 GB in float32) stops sizes that each pass from adding up.
SIZE_BOUNDS = {"width": (1, 8192), "depth": (1, 64), "heads": (1, 128), "ff_mult": (1, 16),
               "num_latent_queries": (1, 1024), "num_clip_tokens": (1, 1024),
               "text_dim": (1, 8192), "context_dim": (1, 8192)}
ENCODER_BOUNDS = {"dim": (1, 8192), "resolution": (14, 2048)}  # 14 px: one patch of a ViT-*/14
MAX_LAYERS, MAX_LAYER_INDEX, MAX_INNER_DIM = 128, 127, 8192
MAX_NAME_LENGTH = 64  # name and injection
MAX_PARAMETERS = 4_000_000_000
# The encoder outputs this version computes (flexip_core.encoders).
ENCODER_FEATURES = {"clip": ("image_embeds",), "dino": ("patch_tokens",)}
UNET_BLOCKS = ("input", "middle", "output")

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
        """The config a weight file stores (to_dict's form, or its JSON), every field checked
        before anything is built: a file is untrusted input. ValueError names the bad field."""
        fields = _fields(d, cls, "config")
        sizes = {name: _int(fields[name], f"config.{name}", *bounds) for name, bounds in SIZE_BOUNDS.items()}
        if sizes["width"] % sizes["heads"]:
            raise ValueError(f"config.heads ({sizes['heads']}) must divide config.width ({sizes['width']})")
        config = cls(name=_text(fields["name"], "config.name"), **sizes,
                     clip=_encoder(fields["clip"], "clip"), dino=_encoder(fields["dino"], "dino"),
                     layers=_layers(fields["layers"]), injection=_text(fields["injection"], "config.injection"))
        count = parameter_count(config)
        if count > MAX_PARAMETERS:
            raise ValueError(f"config describes {count:,} parameters; this version loads at most {MAX_PARAMETERS:,}")
        return config


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


def register_config(config):
    """Make `config` a known base model of this process, so the weight loader
    (flexip_core.weights.load_flexip) accepts files trained for it, e.g. a research base model's.
    Registering the same config again does nothing; another config under a known name is refused
    (ValueError), so a shipped configuration cannot be replaced."""
    if not isinstance(config, FlexIPConfig):
        raise TypeError(f"register_config takes a FlexIPConfig, got {type(config).__name__}")
    known = CONFIGS.setdefault(config.name, config)
    if known != config:
        raise ValueError(f"flexip_core.config.CONFIGS already holds another configuration named {config.name!r}")
    return config


def parameter_count(config):
    """The parameters FlexIP(config) has, from the sizes alone (nothing is built)."""
    w, out = config.width, config.context_dim

    def resampler(memory_dim):
        # memory_in; per block: attention (2 norms, q, kv, out) and feed-forward (norm, 2 linears);
        # proj_out; norm_out.
        block = (4 * w + 4 * w * w) + (2 * w + 2 * config.ff_mult * w * w)
        return (memory_dim + 1) * w + config.depth * block + (w + 1) * out + 2 * out

    clip_tokens = (config.clip.dim + 1) * config.num_clip_tokens * w + 2 * w
    preservation = config.num_latent_queries * w + clip_tokens + 2 * resampler(config.dino.dim)
    personalization = clip_tokens + (config.text_dim + 1) * w + resampler(w)
    projections = sum(4 * out * inner for _, inner in config.layers)
    return preservation + personalization + projections + 2  # + the gate's alpha and beta


def _show(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _fields(d, cls, where):
    """d's values by field name, after checking d is a mapping with exactly cls's fields."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a JSON object, not {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    missing = [f"{where}.{name}" for name in names if name not in d]
    unknown = [f"{where}.{str(key)[:40]}" for key in d if key not in names]
    problems = []
    if missing:
        problems.append(f"{', '.join(missing)} missing")
    if unknown:
        more = [f"{len(unknown) - 8} more"] if len(unknown) > 8 else []
        problems.append(f"{', '.join(unknown[:8] + more)} unknown")
    if problems:
        raise ValueError("; ".join(problems))
    return d


def _int(value, where, low, high):
    if type(value) is not int or not low <= value <= high:  # type(): bool is an int subclass
        raise ValueError(f"{where} is {_show(value)}; it must be an integer from {low} to {high}")
    return value


def _text(value, where):
    if type(value) is not str or not 1 <= len(value) <= MAX_NAME_LENGTH:
        raise ValueError(f"{where} is {_show(value)}; it must be a text of 1 to {MAX_NAME_LENGTH} characters")
    return value


def _channels(value, where, positive):
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(type(x) in (int, float) and math.isfinite(x) and (x > 0 or not positive) for x in value))
    if not ok:
        above = " above 0" if positive else ""
        raise ValueError(f"{where} is {_show(value)}; it must be 3 finite numbers{above}")
    return tuple(float(x) for x in value)


def _encoder(d, which):
    where = f"config.{which}"
    d = _fields(d, EncoderSpec, where)
    known = ENCODER_FEATURES[which]
    if type(d["feature"]) is not str or d["feature"] not in known:
        raise ValueError(f"{where}.feature is {_show(d['feature'])}; this version reads only "
                         + ", ".join(map(repr, known)))
    return EncoderSpec(d["feature"],
                       *(_int(d[name], f"{where}.{name}", *bounds) for name, bounds in ENCODER_BOUNDS.items()),
                       _channels(d["mean"], f"{where}.mean", positive=False),
                       _channels(d["std"], f"{where}.std", positive=True))


def _layers(layers):
    if not isinstance(layers, (list, tuple)) or not 1 <= len(layers) <= MAX_LAYERS:
        raise ValueError(f"config.layers is {_show(layers)}; it must be a list of 1 to {MAX_LAYERS} layers")
    checked = {}
    for i, entry in enumerate(layers):
        where = f"config.layers[{i}]"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and isinstance(entry[0], (list, tuple)) and len(entry[0]) == 3):
            raise ValueError(f"{where} is {_show(entry)}; it must be [[block, index, transformer_index], inner_dim]")
        (block, index, transformer), inner = entry
        if type(block) is not str or block not in UNET_BLOCKS:
            raise ValueError(f"{where} block is {_show(block)}; it must be one of {', '.join(UNET_BLOCKS)}")
        key = (block, _int(index, f"{where} index", 0, MAX_LAYER_INDEX),
               _int(transformer, f"{where} transformer_index", 0, MAX_LAYER_INDEX))
        if key in checked:
            raise ValueError(f"{where} repeats the layer {key}")
        checked[key] = _int(inner, f"{where} inner_dim", 1, MAX_INNER_DIM)
    return tuple(checked.items())
