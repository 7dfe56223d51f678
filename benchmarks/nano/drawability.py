"""What the base model can draw: its reconstruction accuracy per attribute.

An adapter can only pass on what the frozen base is able to draw. Each evaluation case's target
(its subject in the scene its prompt asks for) is noised half-way along the evaluation's sampler
schedule (KSampler denoise DENOISE) and denoised by the base alone with the target's complete
caption (shape, colour and scene named; the pattern and the mark are never named). An attribute is
drawable as far as it survives: the fraction of reconstructions that keep it, decoded by
scoring.PlacementDecoder. scoring.counted() leaves attributes the base cannot draw out of the scores.
"""
import numpy as np
import torch

from . import world
from .base import UNET, to_latents, to_pixels
from .evaluate import SAMPLER, SCHEDULER, sweep_noise
from .scoring import ATTRIBUTES, true_attributes

DENOISE = 0.5


@torch.no_grad()
def reconstruct(model, text, empty, noise, sampling, pictures, denoise=DENOISE):
    """The pictures noised to the sampler's sigma at `denoise` and sampled back with CFG (as evaluate.sample)."""
    import comfy.sample
    out = comfy.sample.sample(model, noise, sampling.steps, sampling.cfg, SAMPLER, SCHEDULER, [[text, {}]],
                              [[empty, {}]], to_latents(pictures), denoise=denoise, disable_pbar=True)
    return to_pixels(out)


def reconstruction_accuracy(base, cases, seeds, sampling, decoder):
    """{attribute: fraction of reconstructions (cases x seeds) that keep it} and the pictures
    [seeds, cases, 32, 32, 3] (uint8)."""
    renderer = world.Renderer()
    targets = renderer.render([c.subject for c in cases], [c.prompt_scene for c in cases])
    captions = [world.caption(world.Subject.from_id(c.subject), world.Scene.from_id(c.prompt_scene)) for c in cases]
    text, empty = base.text(captions), base.empty_text(len(cases)).clone()
    truth = true_attributes(cases)
    kept = {a: [] for a in ATTRIBUTES}
    pictures = []
    for seed in seeds:
        noise = sweep_noise(cases, seed, (UNET["in_channels"], world.SIZE // 2, world.SIZE // 2))
        out = reconstruct(base.model, text, empty, noise, sampling, targets)
        decoded = decoder(out)
        for a in ATTRIBUTES:
            kept[a].append((decoded[a] == truth[a]).float())
        pictures.append((out * 255).round().to(torch.uint8))
    return {a: float(torch.cat(v).mean()) for a, v in kept.items()}, np.asarray(torch.stack(pictures))
