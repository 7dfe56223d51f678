"""The frozen parts of FlexIP training, loaded and run by ComfyUI's own code.

The base is any SD1.5 checkpoint ComfyUI loads (a fine-tune included), the encoders are the
CLIP ViT-H/14 and DINOv2-L files of models/clip_vision, loaded by ComfyUI's CLIP vision loader:
the very classes and preprocessing the nodes use, so the adapters train on the features they
will see. Everything here is frozen and runs under no_grad, except the UNet call, whose
gradients flow to FlexIP's K/V through the attn2 patches. This module is the only part of
training that imports ComfyUI.
"""
import functools
import importlib.util
import sys
from pathlib import Path

import torch
import torch.utils.checkpoint

from flexip_core.encoders import comfy_clip_embeds, comfy_dino_patches
from flexip_core.injection import COND
from flexip_core.patch import cross_attentions, unet_mismatch
from flexip_core.preprocess import preprocess_reference

REPO = Path(__file__).resolve().parent.parent
TEXT_TOKENS = 77  # one CLIP chunk: every sample of a batch gets the same token count


def import_comfy(comfyui_path=""):
    """ComfyUI's `comfy` package from comfyui_path (default: the ComfyUI this pack is installed in)."""
    root = Path(comfyui_path) if comfyui_path else REPO.parent.parent
    if not (root / "comfy" / "sd.py").is_file():
        raise FileNotFoundError(f"no ComfyUI at {root}: set [model] comfyui to your ComfyUI folder")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.clip_vision
    import comfy.model_management
    import comfy.sd
    return comfy


def import_pack():
    """This repository imported as ComfyUI imports a custom node pack (its nodes render the validation grid)."""
    name = "comfyui_flexip"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def checkpoint_blocks(diffusion_model):
    """Gradient checkpointing: each UNet block recomputes its activations in the backward pass."""
    blocks = [*diffusion_model.input_blocks, diffusion_model.middle_block, *diffusion_model.output_blocks]
    for block in blocks:
        block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)


def freeze(module):
    module.requires_grad_(False)
    module.eval()


class FrozenBase:
    """SD1.5 (UNet, VAE, text encoder) and the two image encoders, frozen, on ComfyUI's device."""

    def __init__(self, model, clip, vae, clip_vision, dino, config, gradient_checkpointing=False):
        import comfy.model_base
        import comfy.model_management
        from comfy.ldm.modules.attention import optimized_attention

        problem = unet_mismatch(model.model.diffusion_model, config)
        if problem:
            raise ValueError(f"[model] checkpoint: this UNet ({type(model.model.model_config).__name__}: {problem} "
                             "Use an SD1.5 checkpoint.")
        self.model, self.clip, self.vae, self.clip_vision, self.dino = model, clip, vae, clip_vision, dino
        self.config = config
        self.attention = optimized_attention
        # A checkpoint's UNet comes with requires_grad=True, and a CLIP vision forward with grad
        # enabled keeps gigabytes alive: freeze everything frozen.
        # (clip, vae and the encoders may be None where a caller encodes by other means, e.g. tests.)
        freeze(model.model)
        for part, attribute in ((clip, "cond_stage_model"), (vae, "first_stage_model"), (clip_vision, "model"),
                                (dino, "model")):
            if part is not None:
                freeze(getattr(part, attribute))
        # Backprop needs the whole UNet resident: no partial offload.
        comfy.model_management.load_models_gpu([model], force_full_load=True)
        self.device = model.load_device
        self.sampling = model.get_model_object("model_sampling")
        self.v_prediction = model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
        if model.model.model_type not in (comfy.model_base.ModelType.EPS, comfy.model_base.ModelType.V_PREDICTION):
            raise ValueError(f"[model] checkpoint: prediction type {model.model.model_type.name} is not supported "
                             "(epsilon and v-prediction are)")
        self.layers = sorted(cross_attentions(model.model.diffusion_model))
        if gradient_checkpointing:
            checkpoint_blocks(model.model.diffusion_model)
        self._empty_text = None

    @classmethod
    def from_files(cls, checkpoint, clip_vision, dino, config, gradient_checkpointing=False):
        import comfy.clip_vision
        import comfy.sd
        for option, path in (("checkpoint", checkpoint), ("clip_vision", clip_vision), ("dino", dino)):
            if not path or not Path(path).is_file():
                raise FileNotFoundError(f"[model] {option}: no file at {path!r}")
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint))
        return cls(model, clip, vae, comfy.clip_vision.load(str(clip_vision)), comfy.clip_vision.load(str(dino)),
                   config, gradient_checkpointing)

    @torch.no_grad()
    def text(self, captions):
        """[B, 77, text_dim] prompt embeddings, as CLIP Text Encode gives them (first 77-token chunk)."""
        embeds = [self.clip.encode_from_tokens(self.clip.tokenize(c))[:, :TEXT_TOKENS] for c in captions]
        return torch.cat(embeds).float().clone()

    def empty_text(self, batch):
        """The empty prompt's embedding [batch, 77, text_dim]: what a dropped prompt becomes."""
        if self._empty_text is None:
            self._empty_text = self.text([""])
        return self._empty_text.expand(batch, -1, -1)

    @torch.no_grad()
    def latents(self, pixels):
        """pixels [B, H, W, 3] in [0, 1] -> the UNet's latents (VAE, then the model's latent scaling)."""
        return self.model.model.process_latent_in(self.vae.encode(pixels)).float().clone()

    @torch.no_grad()
    def reference(self, images, masks=None):
        """images [B, H, W, 3] in [0, 1], masks [B, H, W] or None -> (clip_embeds [B, dim], dino_patches [B, M, dim]),
        through the preprocessing and encoder code the ReferenceEncoder node runs."""
        import comfy.model_management
        out = []
        for encoder, features, spec in ((self.clip_vision, comfy_clip_embeds, self.config.clip),
                                        (self.dino, comfy_dino_patches, self.config.dino)):
            comfy.model_management.load_model_gpu(encoder.patcher)
            pixels = preprocess_reference(images, spec, "center", masks).to(encoder.load_device)
            out.append(features(encoder.model, pixels, spec).float().clone())
        return tuple(out)

    def add_noise(self, latents, timesteps, noise):
        """(noisy latents, sigma [B]) at integer training timesteps [B] (0 .. steps - 1)."""
        sigma = self.sampling.sigmas[timesteps.cpu()].to(latents.device)
        return self.sampling.noise_scaling(sigma, noise.to(latents), latents), sigma

    @property
    def timesteps(self):
        return len(self.sampling.sigmas)

    def denoise(self, noisy, sigma, context, patches):
        """The UNet's x0 prediction with FlexIP's attn2 patches, through ComfyUI's apply_model."""
        options = {"patches_replace": {"attn2": patches}, "cond_or_uncond": [COND], "sigmas": sigma}
        return self.model.model.apply_model(noisy, sigma, c_crossattn=context, transformer_options=options)
