"""A tiny frozen base for training tests that run in seconds: ComfyUI's real UNetModel, BaseModel
and model sampling (SD1.5's epsilon schedule) at toy widths, wrapped in flexip_train's FrozenBase,
with fixed stand-ins for the VAE, the text encoder and the two image encoders.

The stand-ins are deterministic functions of the pixels and words, so a reference really carries
its picture's look (an image sample's reference and target are one picture) and the adapters have
something to learn; the UNet call, the attn2 patches, the noise schedule and the loss are the
real ones.
"""
import dataclasses
import hashlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "scripts"))  # under torchrun too
import host  # noqa: E402

COMFYUI = host.COMFYUI  # the test host FLEXIP_HOST selects
TEXT_DIM = 32

UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
            use_spatial_transformer=True, transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
            transformer_depth_middle=1, context_dim=TEXT_DIM, num_head_channels=16, use_linear_in_transformer=True,
            adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False, legacy=False)


def import_comfy():
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    return comfy


def word_vector(word, dim):
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def tiny_flexip_config(layers):
    from flexip_core.config import TINY
    return dataclasses.replace(TINY, name="tiny-test", text_dim=TEXT_DIM, context_dim=TEXT_DIM, layers=tuple(layers))


def make_tiny_base(seed=0):
    """(FrozenBase over a tiny real ComfyUI SD1.5-type model, the FlexIP config fitting its layers)."""
    import_comfy()
    import comfy.model_patcher
    import comfy.supported_models
    import random_models

    from flexip_core.patch import cross_attentions
    from flexip_train.comfy_base import FrozenBase

    model = comfy.supported_models.SD15(dict(UNET)).get_model({})
    random_models._randomise(model.diffusion_model, torch.Generator().manual_seed(seed))
    patcher = comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))
    layers = sorted((key, attn.to_k.out_features) for key, attn in cross_attentions(model.diffusion_model).items())
    config = tiny_flexip_config(layers)

    class TinyBase(FrozenBase):
        def __init__(self):
            g = torch.Generator().manual_seed(seed + 1)
            self.to_latent = torch.randn(4, 3, generator=g)
            self.to_clip = torch.randn(config.clip.dim, 3 * 16, generator=g) * 0.3
            self.to_dino = torch.randn(config.dino.dim, 3, generator=g)
            super().__init__(patcher, None, None, None, None, config)

        def text(self, captions):
            tokens = [[word_vector(w, TEXT_DIM) for w in c.split()][:77] for c in captions]
            pad = word_vector("<pad>", TEXT_DIM)
            return torch.stack([torch.stack(t + [pad] * (77 - len(t))) for t in tokens])

        def latents(self, pixels):  # [B, H, W, 3] -> [B, 4, H/8, W/8]
            pooled = F.avg_pool2d(pixels.movedim(-1, 1), 8) * 2 - 1
            return torch.einsum("lc,bchw->blhw", self.to_latent, pooled)

        def reference(self, images, masks=None):  # [N, S, S, 3] -> CLIP [N, dim], DINO [N, 16, dim]
            x = images.movedim(-1, 1) * (1 if masks is None else masks[:, None])
            grid = F.adaptive_avg_pool2d(x, 4)  # [N, 3, 4, 4]
            clip = grid.flatten(1) @ self.to_clip.T
            dino = torch.einsum("dc,ncp->npd", self.to_dino, grid.flatten(2))
            return clip, dino

    return TinyBase(), config
