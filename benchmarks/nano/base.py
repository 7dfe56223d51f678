"""The miniature's base model: ComfyUI's own UNetModel at toy widths with a small text encoder,
trained on the world's captioned pictures, then frozen behind flexip_train's FrozenBase.

- "Latents": a 32 x 32 picture as 12 channels at 16 x 16 (pixel unshuffle of pixels * 2 - 1), a
  lossless, fixed stand-in for SD's VAE (factor 2 instead of 8) that makes the UNet 4x cheaper.
- UNet: SD1.5's class and noise schedule (1000 steps), with v-prediction (as SD2's 768-v models:
  an epsilon model this small and this briefly trained leaves its samples full of noise, its
  x0 error at high noise being the epsilon error times sigma), model_channels 32,
  channel_mult (1, 2, 2), one res block per level, cross-attention at the two
  lower levels and the middle (7 layers, keyed as ComfyUI keys attn2 patches) and no
  self-attention (convolutions see a 16 x 16 grid whole; the speed-up is about 3x on a CPU).
- Text: word tokens of the world's vocabulary, 16 positions, a 2-layer transformer, 64-d.
Trained with flexip_core.training's loss (v-prediction's) on freshly rendered training subjects.
"""
import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from flexip_core.preprocess import BACKGROUND

from . import world

REPO = Path(__file__).resolve().parents[2]
COMFYUI = REPO / ".host" / "ComfyUI"
TEXT_TOKENS = 16
TEXT_DIM = 64
UNSHUFFLE = 2
UNET = dict(image_size=world.SIZE // UNSHUFFLE, in_channels=3 * UNSHUFFLE ** 2, out_channels=3 * UNSHUFFLE ** 2,
            model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2), use_spatial_transformer=True,
            transformer_depth=[1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1], transformer_depth_middle=1,
            context_dim=TEXT_DIM, use_linear_in_transformer=True, adm_in_channels=None,
            use_temporal_attention=False, use_temporal_resblock=False, legacy=False,
            disable_self_attentions=[True] * 3, disable_middle_self_attn=True)


def import_comfy(comfyui=COMFYUI):
    """ComfyUI's `comfy` on the CPU with PyTorch's attention, if this process imports it first
    (the choice is made when its attention module loads; a process that imported it already,
    a test session say, keeps its own)."""
    if not (Path(comfyui) / "comfy" / "sd.py").is_file():
        raise FileNotFoundError(f"nano: no ComfyUI at {comfyui}; run `python3 scripts/host.py` first")
    if str(comfyui) not in sys.path:
        sys.path.insert(0, str(comfyui))
    import comfy.cli_args
    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401
    import comfy.supported_models
    return comfy


def to_latents(pixels):
    """[B, 32, 32, 3] in [0, 1] -> [B, 12, 16, 16]."""
    return F.pixel_unshuffle(pixels.movedim(-1, 1) * 2 - 1, UNSHUFFLE)


def to_pixels(latents):
    """The inverse of to_latents, clamped to [0, 1]."""
    return ((F.pixel_shuffle(latents, UNSHUFFLE) + 1) / 2).clamp(0, 1).movedim(1, -1)


class TextEncoder(nn.Module):
    """Captions -> [B, 16, 64] token embeddings (the role of SD's CLIP text encoder)."""

    def __init__(self, vocabulary=world.VOCABULARY, dim=TEXT_DIM, layers=2, heads=4):
        super().__init__()
        self.vocabulary = {word: i for i, word in enumerate(vocabulary)}
        self.embed = nn.Embedding(len(vocabulary), dim)
        self.position = nn.Parameter(torch.randn(TEXT_TOKENS, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, captions):
        rows = []
        for text in captions:
            words = text.replace(",", " ").split()
            unknown = [w for w in words if w not in self.vocabulary]
            if unknown or len(words) > TEXT_TOKENS:
                raise ValueError(f"nano text encoder: {text!r} has words outside the world's vocabulary {unknown} "
                                 f"or more than {TEXT_TOKENS} words; use the world's words "
                                 "(benchmarks.nano.world.VOCABULARY)")
            rows.append([self.vocabulary[w] for w in words] + [0] * (TEXT_TOKENS - len(words)))
        return torch.tensor(rows, dtype=torch.long, device=self.position.device)

    def forward(self, captions):
        x = self.embed(self.tokenize(captions)) + self.position
        return self.norm(self.layers(x))


def unet_model():
    """ComfyUI's SD1.5 BaseModel (UNetModel, epsilon sampling) at the miniature's sizes."""
    comfy = import_comfy()
    import comfy.latent_formats
    import comfy.model_base

    class UnshuffledPixels(comfy.latent_formats.LatentFormat):
        latent_channels = 3 * UNSHUFFLE ** 2  # scale_factor 1: the sampler sees to_latents' values

    class NanoSD15(comfy.supported_models.SD15):
        latent_format = UnshuffledPixels
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}  # SD1.5's 8 heads would be 4 wide here

        def inpaint_model(self):  # ComfyUI takes any UNet with more than 4 input channels for an inpainting one
            return False

        def model_type(self, state_dict, prefix=""):  # v-prediction, as SD2 768-v: see the module docstring
            return comfy.model_base.ModelType.V_PREDICTION

    model = NanoSD15(dict(UNET)).get_model({})
    initialise(model.diffusion_model)
    return model


@torch.no_grad()
def initialise(unet):
    """PyTorch's default initialisation for every layer (ComfyUI's layers skip it: they expect a
    checkpoint), and a zero output convolution, as diffusion UNets start."""
    for module in unet.modules():
        torch_class = next((c for c in type(module).__mro__ if c.__module__.startswith("torch.nn.modules")), None)
        if torch_class is not None and hasattr(torch_class, "reset_parameters"):
            torch_class.reset_parameters(module)
    unet.out[-1].weight.zero_()
    unet.out[-1].bias.zero_()


def random_caption(subject, scene, rng):
    """A training caption for the base: the colour named half the time, each scene word left out
    one time in ten (so partial prompts are in its world too)."""
    words = world.caption(subject, scene, name_colour=rng.random() < 0.5)
    for word in (scene.size, f"at the {scene.position}", f"on {scene.background}"):
        if rng.random() < 0.1:
            words = words.replace(f" {word}", "", 1)
    return words


def train_base(steps, batch, seed=0, lr=1e-3, uncond=0.1, ema=0.999, progress=True):
    """Train UNet and text encoder together on freshly rendered training subjects; returns the
    EMA weights {"unet.*", "text.*"}."""
    import numpy as np

    from flexip_core.training import epsilon_loss
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, text = unet_model(), TextEncoder()
    params = list(model.diffusion_model.parameters()) + list(text.parameters())
    for p in params:
        p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    averaged = {name: copy.deepcopy(module).requires_grad_(False) for name, module in (("unet", model.diffusion_model),
                                                                                        ("text", text))}
    renderer = world.Renderer()
    train_subjects, _ = world.split()
    sigmas = model.model_sampling.sigmas
    bar = tqdm(range(steps), desc="base: UNet + text encoder", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        subjects = rng.choice(train_subjects, batch)
        scenes = rng.integers(world.NUM_SCENES, size=batch)
        x0 = to_latents(renderer.render(subjects, scenes))
        captions = ["" if rng.random() < uncond else random_caption(world.Subject.from_id(s), world.Scene.from_id(c), rng)
                    for s, c in zip(subjects, scenes)]
        sigma = sigmas[torch.randint(0, len(sigmas), (batch,))]
        noisy = model.model_sampling.noise_scaling(sigma, torch.randn_like(x0), x0)
        x0_pred = model.apply_model(noisy, sigma, c_crossattn=text(captions))
        loss = epsilon_loss(x0_pred, x0, sigma, v_prediction=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, module in (("unet", model.diffusion_model), ("text", text)):
                for mine, live in zip(averaged[name].parameters(), module.parameters()):
                    mine.lerp_(live, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return {f"{name}.{key}": value.contiguous() for name, module in averaged.items()
            for key, value in module.state_dict().items()}


def save_base(weights, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))


def load_base(path):
    """(ComfyUI ModelPatcher of the trained UNet, TextEncoder), both frozen, on the CPU."""
    import comfy.model_patcher
    weights = load_file(str(path))
    model, text = unet_model(), TextEncoder()
    model.diffusion_model.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("unet.")})
    text.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("text.")})
    text.requires_grad_(False).eval()
    patcher = comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))
    return patcher, text


def nano_base(patcher, text, encoders, flexip_config):
    """The frozen base FlexIP trains against: flexip_train's FrozenBase with the miniature's text
    encoder, "latents" and reference encoders (benchmarks.nano.encoders) in place of SD's."""
    from flexip_train.comfy_base import FrozenBase

    class NanoBase(FrozenBase):
        def __init__(self):
            self.text_encoder, self.encoders = text, encoders
            super().__init__(patcher, None, None, None, None, flexip_config)

        @torch.no_grad()
        def text(self, captions):
            return self.text_encoder(captions)

        @torch.no_grad()
        def latents(self, pixels):
            return to_latents(resize(pixels))

        @torch.no_grad()
        def reference(self, images, masks=None):
            if masks is not None:  # as flexip_core.preprocess does: masked-out areas become its grey
                images = images * masks[..., None] + BACKGROUND * (1 - masks[..., None])
            return self.encoders(resize(images))

    return NanoBase()


def resize(pixels):
    """[B, S, S, 3] -> [B, 32, 32, 3] by area (the dataset loads references at twice the
    encoders' resolution, as it does for CLIP and DINOv2)."""
    if pixels.shape[1] == world.SIZE:
        return pixels
    return F.interpolate(pixels.movedim(-1, 1), size=(world.SIZE, world.SIZE), mode="area").movedim(1, -1)
