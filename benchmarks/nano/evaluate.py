"""Evaluation: exact evaluators of the world, and the control sweeps sampled with ComfyUI's sampler.

Evaluators (in place of CLIP-I and CLIP-T): a generated picture is decoded as the world picture
nearest to it (least squares over every subject in every scene: maximum likelihood under pixel
noise; on a clean render it returns that render's subject and scene exactly).
- identity score: the fraction of the subject's four attributes (shape, colour, pattern, mark)
  the decoded picture has.
- prompt score: the fraction of the prompt's three scene attributes (background, position, size)
  the decoded picture has.

Sweeps: every case (a held-out subject's reference and a prompt asking for another scene) is
sampled at every control value with the same noise (one seed per sweep), through ComfyUI's
KSampler with classifier-free guidance. FlexIP and the baseline enter the UNet only as
flexip_core.patch.GatedAttention attn2 patches built the way the GatedApply node builds them,
batched over cases; the uncond pass sees the dropped reference, as in training.
"""
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from flexip_core.injection import COND, UNCOND
from flexip_core.patch import GatedAttention

from . import world
from .base import UNET, to_pixels

SAMPLER, SCHEDULER = "euler", "normal"
SCORES = ("identity", "prompt", "subject_attributes", "prompt_attributes", "reference_attributes")


@dataclass(frozen=True)
class Sampling:
    steps: int = 15
    cfg: float = 3.0


# --- Evaluators --------------------------------------------------------------------------------

class Decoder:
    """pictures [N, 32, 32, 3] -> (subject ids [N], scene ids [N]) of the nearest world pictures."""

    def __init__(self, renderer=None):
        self.renderer = renderer or world.Renderer()
        subjects = torch.arange(world.NUM_SUBJECTS)
        # One scene's renders of every subject at a time: [scenes][subjects, pixels] (64 MB in all).
        self.renders = [self.renderer.render(subjects, torch.full_like(subjects, c)).flatten(1)
                        for c in range(world.NUM_SCENES)]
        self.norms = [r.pow(2).sum(1) for r in self.renders]

    @torch.no_grad()
    def __call__(self, pictures):
        x = pictures.reshape(len(pictures), -1).float()
        best = torch.full((len(x),), float("inf"))
        subject = torch.zeros(len(x), dtype=torch.long)
        scene = torch.zeros(len(x), dtype=torch.long)
        for c, (renders, norms) in enumerate(zip(self.renders, self.norms)):
            distance = norms[None, :] - 2 * x @ renders.T  # + |x|^2, the same for every render
            value, index = distance.min(1)
            better = value < best
            best = torch.where(better, value, best)
            subject = torch.where(better, index, subject)
            scene = torch.where(better, torch.full_like(scene, c), scene)
        return subject, scene


def attribute_agreement(kind, decoded, true):
    """[N, attributes]: 1 where the decoded and the true id (of subjects or scenes) share the attribute."""
    table = world.attribute_table(kind)
    return (table[torch.as_tensor(decoded)] == table[torch.as_tensor(true)]).float()


def identity_score(decoded_subjects, subjects):
    return attribute_agreement("subject", decoded_subjects, subjects).mean(1)


def prompt_score(decoded_scenes, prompt_scenes):
    return attribute_agreement("scene", decoded_scenes, prompt_scenes).mean(1)


def score(decoder, pictures, cases):
    """For pictures generated for cases: "identity" and "prompt" [N], and per attribute [N, k]:
    "subject_attributes" (world.SUBJECT_ATTRIBUTES kept), "prompt_attributes" (the prompt's scene
    attributes shown) and "reference_attributes" (the reference's scene attributes shown: copied)."""
    subjects, scenes = decoder(pictures)
    kept = attribute_agreement("subject", subjects, [c.subject for c in cases])
    shown = attribute_agreement("scene", scenes, [c.prompt_scene for c in cases])
    return {"identity": kept.mean(1), "prompt": shown.mean(1), "subject_attributes": kept,
            "prompt_attributes": shown,
            "reference_attributes": attribute_agreement("scene", scenes, [c.reference_scene for c in cases])}


# --- Conditioning and patches ------------------------------------------------------------------

def reference_pictures(renderer, cases, reference_size, references="scene"):
    """The cases' reference pictures as training loads a variant sample's reference: the 32 px
    picture (PNG-quantised) resized to the dataset's reference size (the base resizes it back);
    references="subject": the subject alone (data.subject_reference, box EVALUATION_SUBJECT_BOX)."""
    from PIL import Image

    from flexip_train.dataset import centre_box, square, to_tensor

    from .data import EVALUATION_SUBJECT_BOX, subject_reference
    subjects, scenes = [c.subject for c in cases], [c.reference_scene for c in cases]
    pictures = renderer.render(subjects, scenes)
    if references == "subject":
        pictures = torch.stack([subject_reference(p, m, EVALUATION_SUBJECT_BOX)
                                for p, m in zip(pictures, renderer.subject_mask(subjects, scenes))])
    out = []
    for picture in pictures:
        image = Image.fromarray((picture.numpy() * 255).round().astype(np.uint8))
        out.append(to_tensor(square(image, reference_size, centre_box(*image.size))))
    return pictures, torch.stack(out)


@torch.no_grad()
def adapter_tokens(flexip, base, references, prompts):
    """P and S for COND and UNCOND, batched over cases: {kind: [N, tokens, context]} each. UNCOND is
    what training's dropout shows: P from the zeroed reference, S from the empty prompt and a
    zeroed global embedding."""
    clip, dino = base.reference(references)
    text, empty = base.text(prompts), base.empty_text(len(prompts))
    zero_clip, zero_dino = torch.zeros_like(clip), torch.zeros_like(dino)
    flexip = flexip.eval()
    p = {COND: flexip.preservation(clip, dino), UNCOND: flexip.preservation(zero_clip, zero_dino)}
    s = {COND: flexip.personalization(text, clip), UNCOND: flexip.personalization(empty, zero_clip)}
    return p, s


def patched_model(patcher, flexip, p, s, gamma, strength):
    """The base ModelPatcher with FlexIP's gated attn2 patch on every layer (GatedApply's wiring)."""
    from comfy.ldm.modules.attention import optimized_attention
    patched = patcher.clone()
    with torch.no_grad():
        for key in flexip.projections.keys:
            kv_p, kv_s = {}, {}
            for kind in p:
                kv_p[kind], kv_s[kind] = flexip.projections[key](p[kind], s[kind])
            patched.set_model_attn2_replace(GatedAttention(key, kv_p, kv_s, gamma, strength, optimized_attention), *key)
    return patched


@torch.no_grad()
def sample(model, text, empty, noise, sampling):
    """Pictures [N, 32, 32, 3] from noise [N, 12, 16, 16] with CFG against the empty prompt."""
    import comfy.sample
    latent = torch.zeros_like(noise)
    out = comfy.sample.sample(model, noise, sampling.steps, sampling.cfg, SAMPLER, SCHEDULER,
                              [[text, {}]], [[empty, {}]], latent, disable_pbar=True)
    return to_pixels(out)


def sweep_noise(cases, seed, shape):
    """One noise per (case, seed), the same at every control value of a sweep."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 100_003 + i))
                        for i in range(len(cases))])


# --- Sweeps ------------------------------------------------------------------------------------

@dataclass
class Method:
    """A way to condition the base on the reference: a FlexIP module (None: the base model alone)
    and how a control value becomes (gamma, strength) in the gated patch."""
    name: str
    flexip: object
    control: str           # the swept quantity's name, for plots
    values: tuple          # the control values
    gamma_strength: object  # value -> (gamma, strength)
    references: str = "scene"  # what the encoders see: the whole picture, or the subject alone


def flexip_method(flexip, values, references="scene"):
    return Method("FlexIP", flexip, "gamma", tuple(values), lambda g: (g, 1.0), references)


def run_sweeps(base, methods, cases, seeds, sampling, progress=True):
    """{method name: {"values": [...], "identity": [seeds, values, cases], "prompt": ..., the
    per-attribute scores [seeds, values, cases, attributes] (see score), "pictures": [seeds, values,
    cases, 32, 32, 3] (uint8)}}; the base model alone is {"base": {... with one value}}."""
    renderer = world.Renderer()
    decoder = Decoder(renderer)
    reference_size = 2 * base.config.clip.resolution
    prompts = [c.prompt for c in cases]
    text, empty = base.text(prompts), base.empty_text(len(prompts)).clone()
    shape = (world.SIZE // 2, world.SIZE // 2)
    runs = [("base", None, (None,))] + [(m.name, m, m.values) for m in methods]
    total = sum(len(values) for _, _, values in runs) * len(seeds)
    bar = tqdm(total=total, desc=f"evaluate: {len(cases)} cases per sweep point", unit="point",
               disable=not progress, dynamic_ncols=True)
    results = {}
    for name, method, values in runs:
        tokens = adapter_tokens(method.flexip, base, reference_pictures(renderer, cases, reference_size,
                                                                        method.references)[1], prompts) if method else None
        out = {"values": list(values) if method else [], "pictures": [], **{k: [] for k in SCORES}}
        for seed in seeds:
            noise = sweep_noise(cases, seed, (UNET["in_channels"], *shape))
            rows = {"pictures": [], **{k: [] for k in SCORES}}
            for value in values:
                if method is None:
                    model = base.model
                else:
                    gamma, strength = method.gamma_strength(value)
                    model = patched_model(base.model, method.flexip, *tokens, gamma, strength)
                pictures = sample(model, text, empty, noise, sampling)
                scores = score(decoder, pictures, cases)
                for key in SCORES:
                    rows[key].append(scores[key])
                rows["pictures"].append((pictures * 255).round().to(torch.uint8))
                bar.update(1)
                bar.set_postfix(method=name, identity=f"{scores['identity'].mean():.2f}",
                                prompt=f"{scores['prompt'].mean():.2f}", refresh=False)
            for key in rows:
                out[key].append(torch.stack(rows[key]))
        results[name] = {k: torch.stack(v).numpy() if k != "values" else v for k, v in out.items()}
    bar.close()
    return results
