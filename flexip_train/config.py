"""The training run's configuration: a TOML file of sections, each a dataclass below.

Every option has a default and a help text; `python -m flexip_train --help` prints them all, and
`--print-config` prints a complete TOML file to start from. Unknown sections or keys are errors
(a typo must not silently train with a default).
"""
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


def option(default, help, **kwargs):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class RunOptions:
    output_dir: str = option("runs/flexip", "Folder for checkpoints, logs (metrics.csv, TensorBoard), validation grids and the exported file.")
    seed: int = option(0, "Seed of everything random: data order, augmentation, noise, timesteps, dropout.")
    max_steps: int = option(140000, "Optimizer steps to train (the paper: 140k, the last 40k on higher-quality data).")
    log_every: int = option(10, "Write metrics (loss, alpha, beta, lr, it/s, memory) every N steps.")
    checkpoint_every: int = option(1000, "Save a resumable checkpoint every N steps (and at the end).")
    keep_checkpoints: int = option(3, "How many checkpoints to keep (oldest deleted first).")
    validate_every: int = option(2000, "Render the validation grid every N steps (0: never).")
    resume: str = option("auto", "'auto': continue from the newest complete checkpoint in output_dir if any; "
                                 "'none': start fresh; or a checkpoint folder.")
    export_name: str = option("flexip-sd15.safetensors", "File name of the exported FlexIP weights in output_dir "
                                                         "(copy it to ComfyUI/models/flexip).")


@dataclass
class ModelOptions:
    checkpoint: str = option("", "The frozen base: any SD1.5 checkpoint ComfyUI loads (models/checkpoints).")
    clip_vision: str = option("", "CLIP ViT-H/14 image encoder, HF format (models/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors).")
    dino: str = option("", "DINOv2-L/14, HF hub format (models/clip_vision/dinov2-large.safetensors).")
    comfyui: str = option("", "The ComfyUI folder whose code loads the base model; empty: the ComfyUI this pack "
                              "is installed in (two folders up).")
    flexip_config: str = option("sd15", "FlexIP configuration name (flexip_core.config.CONFIGS).")
    init_from: str = option("", "Warm start from a FlexIP weight file (.safetensors), e.g. an earlier export.")
    init_ip_adapter: str = option("", "Warm start the P branch's per-layer projections and Resampler_L's perceiver blocks "
                                      "and queries from an IP-Adapter-plus SD1.5 file (.safetensors).")
    gradient_checkpointing: bool = option(True, "Recompute the UNet blocks' activations in the backward pass (less memory, ~30% slower).")


@dataclass
class DataOptions:
    manifests: list = option([], "JSONL manifests (python -m flexip_train.build_manifest writes them).")
    shards: str = option("", "A shard set folder (python -m flexip_train shards writes it), streamed instead of "
                             "manifests: for millions of samples. Give manifests or shards, not both.")
    shuffle_buffer: int = option(1000, "Shards: samples each DataLoader worker shuffles among (more: better mixed, "
                                       "more memory).")
    resolution: int = option(512, "Target image side in pixels (the paper: 512).")
    batch_size: int = option(16, "Samples per GPU per micro-batch (the paper: 16 on each of 8 GPUs).")
    num_workers: int = option(4, "DataLoader worker processes per GPU.")
    min_gap: int = option(4, "Video samples: smallest frame gap between reference and target.")
    max_gap: int = option(32, "Video samples: largest frame gap.")
    feature_cache: str = option("", "Folder for cached frozen features (CLIP, DINOv2, VAE latents, prompt embeddings), "
                                    "one safetensors file per sample, filled during the first epoch; later epochs skip "
                                    "the frozen encoders. The cache holds one augmentation per sample (the first). "
                                    "For millions of samples use features. Empty: no cache.")
    features: str = option("", "A feature set folder (python -m flexip_train features --config <this config> --out "
                               "<folder> writes it): the frozen features of every sample of manifests or shards, "
                               "in tar shards, streamed as shards are; the frozen encoders never run. Keep manifests "
                               "or shards: the set must have been written for them and this resolution and [model]. "
                               "Empty: encode while training.")


@dataclass
class OptimOptions:
    lr: float = option(1e-4, "AdamW learning rate (the paper: 1e-4).")
    weight_decay: float = option(0.01, "AdamW weight decay (the paper: 0.01).")
    warmup_steps: int = option(0, "Linear learning-rate warm-up steps, then constant.")
    grad_accum: int = option(1, "Micro-batches per optimizer step (global batch = batch_size x GPUs x grad_accum).")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0: no clipping).")
    mixed_precision: str = option("no", "'no', 'fp16' or 'bf16' (accelerate's autocast; bf16 on Ampere or newer).")


@dataclass
class GateOptions:
    mode: str = option("learned", "'learned': alpha and beta are trained; 'fixed': they stay at the values below; "
                                  "'sampled' (beyond the paper): gamma is drawn per sample, Beta(2, 1) for image "
                                  "samples and Beta(1, 2) for video / multi-view ones (flexip_core.gate.sampled_gamma), "
                                  "and alpha / beta are unused. With image samples whose caption describes another "
                                  "view of the subject, this trains the whole range of gamma and the conflict between "
                                  "reference and prompt.")
    alpha: float = option(0.9, "gamma of image (invariant) samples, initial or fixed; in (0, 1).")
    beta: float = option(0.9, "1 - gamma of video / multi-view (variant) samples, initial or fixed; in (0, 1).")


@dataclass
class DropoutOptions:
    text: float = option(0.05, "Probability of dropping only the prompt (empty prompt).")
    image: float = option(0.05, "Probability of dropping only the reference (zeroed features).")
    both: float = option(0.05, "Probability of dropping both.")
    text_on_images: float = option(0.0, "Image (invariant) samples only: probability of dropping the prompt as well, "
                                        "drawn apart from the three above (0.5: half of them learn from the reference "
                                        "alone). 0: none.")


@dataclass
class LossOptions:
    image_timesteps: float = option(1.0, "Image (invariant) samples draw their timestep from this lowest fraction of "
                                         "the schedule (0.5: the low-noise half, where detail forms rather than "
                                         "layout); video / multi-view samples from all of it. 1: no split.")
    subject_weight: float = option(1.0, "Weight of the target's subject pixels in the loss, the rest weighing 1 (each "
                                        "sample's weights scaled to mean 1, so the loss keeps its scale): "
                                        "above 1 the adapters learn the subject before the background. Needs "
                                        "loss_mask in the manifest (the builders' <name>.loss.mask.png); samples "
                                        "without one weigh every pixel alike. 1: unweighted.")


@dataclass
class ValidationOptions:
    references: list = option([], "Reference images rendered in the validation grid.")
    prompts: list = option([], "Prompts of the validation grid (one row per reference x prompt).")
    gammas: list = option([0.0, 0.5, 1.0], "gamma values of the grid's columns.")
    steps: int = option(20, "Sampler steps per validation image.")
    cfg: float = option(7.5, "Classifier-free guidance scale.")
    size: int = option(512, "Validation image side in pixels.")
    seed: int = option(0, "Noise seed of the validation images (fixed, so grids compare across steps).")


SECTIONS = {"run": RunOptions, "model": ModelOptions, "data": DataOptions, "optim": OptimOptions,
            "gate": GateOptions, "dropout": DropoutOptions, "loss": LossOptions, "validation": ValidationOptions}


@dataclass
class TrainConfig:
    run: RunOptions = field(default_factory=RunOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    gate: GateOptions = field(default_factory=GateOptions)
    dropout: DropoutOptions = field(default_factory=DropoutOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    validation: ValidationOptions = field(default_factory=ValidationOptions)

    def to_dict(self):
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def config_from_dict(data, source="config"):
    sections = {}
    for name, values in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
        cls = SECTIONS[name]
        known = {f.name: f for f in dataclasses.fields(cls)}
        parsed = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown option {name}.{key} (known: {', '.join(known)})")
            expected = type(known[key].default) if known[key].default is not dataclasses.MISSING else list
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{source}: {name}.{key} must be {expected.__name__}, got {value!r}")
            parsed[key] = value
        sections[name] = cls(**parsed)
    config = TrainConfig(**sections)
    check(config, source)
    return config


def load_config(path, overrides=None):
    """The TrainConfig of a TOML file; overrides: {"section.key": value} applied on top."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    return config_from_dict(data, str(path))


def check(config, source):
    problems = []
    if config.optim.mixed_precision not in ("no", "fp16", "bf16"):
        problems.append("optim.mixed_precision must be 'no', 'fp16' or 'bf16'")
    if config.gate.mode not in ("learned", "fixed", "sampled"):
        problems.append("gate.mode must be 'learned', 'fixed' or 'sampled'")
    if not (0 < config.gate.alpha < 1 and 0 < config.gate.beta < 1):
        problems.append("gate.alpha and gate.beta must lie strictly between 0 and 1")
    for name in ("max_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(config.run, name) < 1:
            problems.append(f"run.{name} must be at least 1")
    if config.data.manifests and config.data.shards:
        problems.append("give data.manifests or data.shards, not both")
    if config.data.features and not (config.data.manifests or config.data.shards):
        problems.append("data.features needs the data its features were written for: data.manifests or data.shards")
    if config.data.features and config.data.feature_cache:
        problems.append("data.features holds every sample's features: leave data.feature_cache empty")
    for name in ("batch_size", "resolution", "shuffle_buffer"):
        if getattr(config.data, name) < 1:
            problems.append(f"data.{name} must be at least 1")
    if config.data.resolution % 8:
        problems.append("data.resolution must be a multiple of 8 (the VAE's factor)")
    dropout = (config.dropout.text, config.dropout.image, config.dropout.both)
    if any(not 0 <= p <= 1 for p in dropout) or sum(dropout) > 1:
        problems.append("dropout.text, image and both are probabilities of disjoint events: each in [0, 1], "
                        "their sum at most 1")
    if not 0 <= config.dropout.text_on_images <= 1:
        problems.append("dropout.text_on_images is a probability: in [0, 1]")
    if not 0 < config.loss.image_timesteps <= 1:
        problems.append("loss.image_timesteps is a fraction of the schedule: in (0, 1]")
    if not config.loss.subject_weight > 0:
        problems.append("loss.subject_weight must be above 0")
    if config.optim.grad_accum < 1:
        problems.append("optim.grad_accum must be at least 1")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def describe_options():
    """Every option with its default and help, for --help."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}\n      {f.metadata['help']}")
    return "\n".join(lines)


def to_toml(config):
    """A complete TOML file for `config` (--print-config)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    out = []
    for name, values in config.to_dict().items():
        out.append(f"[{name}]")
        out += [f"{k} = {value(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)
