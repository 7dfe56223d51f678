"""Validation grids during training: fixed references and prompts at fixed gammas, rendered by the
pack's own nodes (ReferenceEncoder, the two adapters, GatedApply) and ComfyUI's sampler, so the
grid shows exactly what a user of the file would get at that step."""
import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .comfy_base import import_pack

SAMPLER, SCHEDULER = "euler", "normal"


def load_image(path):
    """A file as ComfyUI's IMAGE: [1, H, W, 3] float in [0, 1]."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


class Validator:
    def __init__(self, base, options, folder):
        self.base, self.options, self.folder = base, options, Path(folder)
        self.references = [(Path(p).name, load_image(p)) for p in options.references]

    def conditioning(self, text):
        tokens = self.base.clip.tokenize(text)
        cond, pooled = self.base.clip.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    @torch.no_grad()
    def render(self, flexip):
        """{(reference name, prompt, gamma): image [H, W, 3]} through the nodes."""
        import comfy.sample
        nodes = import_pack().nodes
        # A copy: ComfyUI's model management, which the nodes load it through, moves it between devices.
        flexip = nodes.managed.ManagedFlexIP(copy.deepcopy(flexip).eval().cpu())
        opts, images = self.options, {}
        negative = self.conditioning("")
        for name, image in self.references:
            (reference,) = nodes.ReferenceEncoder().encode(flexip, image, self.base.clip_vision, self.base.dino,
                                                           "center", "average")
            (preservation,) = nodes.PreservationAdapter().apply(flexip, reference)
            for prompt in opts.prompts:
                positive = self.conditioning(prompt)
                (personalization,) = nodes.PersonalizationAdapter().apply(flexip, reference, positive, negative)
                for gamma in opts.gammas:
                    (model,) = nodes.GatedApply().apply(self.base.model, flexip, preservation, personalization,
                                                        float(gamma), 1.0, 0.0, 1.0)
                    latent = torch.zeros(1, 4, opts.size // 8, opts.size // 8)
                    noise = comfy.sample.prepare_noise(latent, opts.seed)
                    samples = comfy.sample.sample(model, noise, opts.steps, opts.cfg, SAMPLER, SCHEDULER, positive,
                                                  negative, latent, seed=opts.seed, disable_pbar=True)
                    images[(name, prompt, gamma)] = self.base.vae.decode(samples)[0].float().cpu()
        return images

    def __call__(self, flexip, step):
        images = self.render(flexip)
        path = self.folder / f"step-{step:08d}.png"
        self.folder.mkdir(parents=True, exist_ok=True)
        grid(images, self.references, self.options.prompts, self.options.gammas, f"step {step}").save(path)
        return path


def grid(images, references, prompts, gammas, title):
    """Rows: reference x prompt; columns: the reference, then one image per gamma; labelled."""
    size = next(iter(images.values())).shape[0]
    label = 18
    sheet = Image.new("RGB", ((len(gammas) + 1) * size, label + len(references) * len(prompts) * (size + label)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), f"{title}: reference | gamma {', '.join(f'{g:g}' for g in gammas)}", fill="black")
    row = 0
    for name, reference in references:
        ref = Image.fromarray((reference[0].numpy() * 255).astype(np.uint8)).resize((size, size))
        for prompt in prompts:
            top = label + row * (size + label)
            draw.text((4, top + 2), f"{name}: {prompt}"[:120], fill="black")
            sheet.paste(ref, (0, top + label))
            for col, gamma in enumerate(gammas, start=1):
                pixels = (images[(name, prompt, gamma)].clamp(0, 1).numpy() * 255).astype(np.uint8)
                sheet.paste(Image.fromarray(pixels), (col * size, top + label))
            row += 1
    return sheet
