"""FlexIP-nano: flexip_core's FlexIP at the miniature's widths, trained by flexip_train's Trainer.

The configuration is the TINY one with the miniature's widths and the layers of its UNet (found
with flexip_core.patch.cross_attentions, so the keys are ComfyUI's attn2 keys). The Trainer is the
project's real loop: the 1:1 image / multi-view sampler, the dataset's reference augmentation, CFG
dropout, the gate, GatedAttention patches into ComfyUI's UNet, the epsilon loss, checkpoints and
the exported weight file. The baseline (baseline.py) is trained by the same call with its gate fixed.
"""
import dataclasses

from flexip_core.config import IMAGENET_MEAN, IMAGENET_STD, TINY, EncoderSpec
from flexip_core.patch import cross_attentions

from . import encoders, world
from .base import TEXT_DIM


@dataclasses.dataclass(frozen=True)
class Budget:
    """The adapters' training budget and loss, the same for FlexIP and the baseline.

    subject_weight: the loss weighs the subject's pixels (data.py writes each picture's exact mask)
    this many times the background's (flexip_train's loss.subject_weight). Unweighted, the subject
    is about a tenth of a picture's loss, and the adapters learned the reference's scene before its
    subject (the design note recommends the weighting; 1: unweighted)."""
    steps: int
    batch: int
    lr: float = 1e-3
    warmup: int = 50
    subject_weight: float = 5.0


def nano_config(diffusion_model):
    """FlexIP's configuration for the nano UNet: TINY's structure at the miniature's widths."""
    layers = sorted((key, attn.to_k.out_features) for key, attn in cross_attentions(diffusion_model).items())
    return dataclasses.replace(
        TINY, name="nano", width=64, depth=2, heads=4, ff_mult=2, num_latent_queries=8, num_clip_tokens=4,
        text_dim=TEXT_DIM, context_dim=TEXT_DIM,
        clip=EncoderSpec("image_embeds", encoders.DIM, world.SIZE),
        dino=EncoderSpec("patch_tokens", encoders.DIM, world.SIZE, IMAGENET_MEAN, IMAGENET_STD),
        layers=tuple(layers))


@dataclasses.dataclass(frozen=True)
class Variant:
    """How FlexIP-nano is trained (issue 15's variants). Recorded in the exported weight file's
    training facts and in the report.

    gate: flexip_train's [gate] section. image_captions: "own" (each image sample's own, incomplete
    caption, as real captions are) or "other_view" (another view's whole caption, which the picture
    contradicts: with gate mode "sampled" this teaches the conflict at every gamma). references:
    "scene" (the whole picture) or "subject" (the subject alone, data.subject_reference).
    text_on_images, image_timesteps: flexip_train's dropout.text_on_images and loss.image_timesteps.
    recoloured_views: the share of the multi-view samples whose caption names the body colour that show
    their target in another colour, which the caption names (data.recoloured_view): the colour conflict
    taught on training subjects, at the multi-view samples' gamma (beyond the paper). recoloured_gamma: the
    gamma those recoloured samples train at (the manifest's per-sample gamma; None: the gate's).
    image_gamma: the gamma every image sample (target = reference) trains at, the same way (None: the
    gate's alpha); view_gamma: likewise for every multi-view sample that is not recoloured. view_branches:
    instead, "coin": each such sample trains at its own gamma 1 or 0 by a fixed coin (data.view_branch), so
    that P and S each learn alone from half of them; "both": each multi-view pair is in the manifest twice,
    at its own gamma 1 as it is and at 0 (recoloured where the pair is drawn for it), so that P and S each
    learn alone from all of them."""
    name: str
    gate: dict
    image_captions: str = "own"
    references: str = "scene"
    text_on_images: float = 0.0
    image_timesteps: float = 1.0
    recoloured_views: float = 0.0
    recoloured_gamma: float | None = None
    image_gamma: float | None = None
    view_gamma: float | None = None
    view_branches: str | None = None
    description: str = ""

    def facts(self):
        return {"nano_variant": dataclasses.asdict(self)}

    def settings(self):
        """The fields that differ from their defaults, which is what a stage's stamp records: a field added
        later then changes no existing variant's stamp."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "description" and getattr(self, f.name) != f.default}


# CFG dropout: the paper's 5 % each, with the prompt dropped more often, so that the reference
# alone has to carry the subject more often (design note).
DROPOUT = {"text": 0.1, "image": 0.05, "both": 0.05}


def train_adapters(base, flexip_config, manifests, folder, budget, variant, seed=0, export_name="flexip-nano",
                   progress=True):
    """Train a variant with flexip_train's Trainer (resuming a run left in `folder`); -> the
    exported weight file, the variant in its training facts."""
    from accelerate import Accelerator

    from flexip_train.config import config_from_dict
    from flexip_train.loop import Trainer

    config = config_from_dict({
        "run": {"output_dir": str(folder), "seed": seed, "max_steps": budget.steps, "log_every": 10,
                "checkpoint_every": max(1, budget.steps // 4), "keep_checkpoints": 1, "validate_every": 0,
                "resume": "auto", "export_name": f"{export_name}.safetensors"},
        "data": {"manifests": [str(m) for m in manifests], "resolution": world.SIZE, "batch_size": budget.batch,
                 "num_workers": 0},
        "optim": {"lr": budget.lr, "warmup_steps": budget.warmup, "weight_decay": 0.01, "max_grad_norm": 1.0},
        "gate": dict(variant.gate),
        "dropout": {**DROPOUT, "text_on_images": variant.text_on_images},
        "loss": {"subject_weight": budget.subject_weight, "image_timesteps": variant.image_timesteps},
    }, source="benchmarks.nano")
    trainer = Trainer(config, base, flexip_config, Accelerator(cpu=True), progress=progress)
    trainer.train()
    return trainer.export(extra_facts=variant.facts())
