"""Full-shape, random-initialised model files in the formats users actually have.

For tests and the demo, where no real weights can be downloaded. Each file is built once and
cached under .host/models/<ComfyUI models folder>/ (git-ignored); the name carries a recipe
version so a changed recipe rebuilds it.

Traps these files avoid (see shared/host.md): values are rounded to float16 so ComfyUI's
float16 storage loses nothing; DINOv2 is saved with the hub's tensor names, which ComfyUI
expects, not transformers 5's; every normalisation weight is non-zero.
"""
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / ".host" / "models"
RECIPE = "v1"
# The FlexIP file has its own recipe: changing it must not rebuild the 6 GB of encoders and UNet.
FLEXIP_RECIPE = "v2"


def _cached(folder, name, build):
    path = MODELS / folder / f"{name}.random-{RECIPE}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        save_file(_fp16_exact(build()), tmp)
        os.replace(tmp, path)
    return path


def _fp16_exact(sd):
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}


def _check_norms(sd):
    zero = [k for k, v in sd.items() if ("norm" in k or "ln" in k) and k.endswith("weight") and not v.any()]
    assert not zero, f"zeroed normalisation weights would make every output equal: {zero[:5]}"
    return sd


def clip_vit_h(seed=0):
    """HF CLIPVisionModelWithProjection, ViT-H/14 shapes (laion2B's image encoder)."""
    def build():
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        torch.manual_seed(seed)
        config = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                  num_attention_heads=16, patch_size=14, image_size=224,
                                  projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
        return _check_norms(CLIPVisionModelWithProjection(config).state_dict())
    return _cached("clip_vision", "CLIP-ViT-H-14", build)


def dinov2_large(seed=1):
    """HF Dinov2Model, large, saved with the hub's tensor names."""
    def build():
        from transformers import Dinov2Config, Dinov2Model

        from flexip_core.encoders import DINOV2_HUB_TO_TRANSFORMERS5, DINOV2_LARGE
        torch.manual_seed(seed)
        sd = Dinov2Model(Dinov2Config(**DINOV2_LARGE)).state_dict()
        for hub, new in DINOV2_HUB_TO_TRANSFORMERS5:
            sd = {k.replace(new, hub): v for k, v in sd.items()}
        # transformers initialises these to zeros / constants; random values make the
        # parity tests see every part of the model.
        for k in sd:
            if k.endswith(("mask_token", "cls_token", "position_embeddings")):
                sd[k] = torch.randn_like(sd[k]) * 0.02
        return _check_norms(sd)
    return _cached("clip_vision", "dinov2-large", build)


def _randomise(module, generator):
    """Fill every float tensor: weights ~ N(0, 1/fan_in), 1-D norm scales ~ 1 + N(0, 0.1), biases small.

    ComfyUI's disable_weight_init layers start uninitialised, and a zero-initialised output
    layer or norm would make every image identical whatever the conditioning.
    """
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if t.ndim >= 2:
                t.copy_(torch.randn(t.shape, generator=generator) * (t[0].numel() ** -0.5))
            elif name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=generator) * 0.02)
            else:
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=generator))


def sd15_checkpoint(seed=2):
    """An SD1.5 checkpoint (UNet, VAE, CLIP ViT-L text encoder) as one safetensors file, in the
    original key layout, built with ComfyUI's own classes (needs ComfyUI importable)."""
    def build():
        import yaml
        from transformers import CLIPTextConfig, CLIPTextModel

        import comfy.ops
        from comfy.ldm.models.autoencoder import AutoencoderKL
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
        from comfy.model_detection import convert_config

        comfy_dir = Path(comfy.ops.__file__).parent
        params = yaml.safe_load((comfy_dir.parent / "models/configs/v1-inference.yaml").read_text())["model"]["params"]
        unet_params = convert_config({k: v for k, v in params["unet_config"]["params"].items()
                                      if k not in ("use_checkpoint", "legacy")})
        g = torch.Generator().manual_seed(seed)
        unet = UNetModel(**unet_params, operations=comfy.ops.disable_weight_init)
        vae = AutoencoderKL(ddconfig=params["first_stage_config"]["params"]["ddconfig"], embed_dim=4)
        text = CLIPTextModel(CLIPTextConfig.from_json_file(comfy_dir / "sd1_clip_config.json"))
        for module in (unet, vae, text):
            _randomise(module, g)
        _check_text_matters(unet)
        sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
        sd.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
        sd.update({f"cond_stage_model.transformer.{k}": v for k, v in text.state_dict().items()
                   if not k.endswith("position_ids")})
        return sd
    return _cached("checkpoints", "sd15", build)


@torch.no_grad()
def _check_text_matters(unet):
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    a = unet(x, t, context=torch.randn(1, 77, 768))
    b = unet(x, t, context=torch.randn(1, 77, 768))
    assert torch.isfinite(a).all() and not torch.allclose(a, b), "random UNet ignores its text conditioning"


def flexip_sd15(seed=3):
    """A FlexIP(sd15) file as training would start it (random adapters, per-layer projections
    from the random SD1.5 checkpoint's own to_k / to_v), except that each branch's projections
    get their own small random offset: with both branches equal to to_k / to_v, a test could not
    tell P's projections from S's (a node that swapped them would pass)."""
    path = MODELS / "flexip" / f"flexip-sd15.random-{FLEXIP_RECIPE}.safetensors"
    if not path.exists():
        from safetensors import safe_open

        from flexip_core import SD15, FlexIP
        from flexip_core.weights import save_flexip
        torch.manual_seed(seed)
        model = FlexIP(SD15)
        with safe_open(sd15_checkpoint(), "pt") as f:
            model.projections.init_from_unet({key: tuple(
                f.get_tensor(f"model.diffusion_model.{_unet_attn2(key)}.{proj}.weight").float()
                for proj in ("to_k", "to_v")) for key in model.projections.keys})
        _offset_branches(model.projections, torch.Generator().manual_seed(seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_flexip(model, path, {"note": "random-initialised test weights: no training; each branch's "
                                          "projections are the layer's to_k / to_v plus their own offset"})
    return path


@torch.no_grad()
def _offset_branches(projections, generator, scale=0.5):
    """Add to every branch projection its own noise, `scale` times the weight's spread, and check
    that P's and S's projections now differ in every layer."""
    for key in projections.keys:
        layer = projections[key]
        for linear in (layer.to_k_p, layer.to_v_p, layer.to_k_s, layer.to_v_s):
            linear.weight += scale * linear.weight.std() * torch.randn(linear.weight.shape, generator=generator)
        for p, s in ((layer.to_k_p, layer.to_k_s), (layer.to_v_p, layer.to_v_s)):
            gap = (p.weight - s.weight).norm() / p.weight.norm()
            assert gap > 0.1 * scale, f"layer {key}: P's and S's projections are alike ({gap:.3g})"


def _unet_attn2(key):
    """('input', 1, 0) -> the checkpoint's key prefix of that layer's attn2 (SD1.5 layout)."""
    block, index, t = key
    prefix = {"input": f"input_blocks.{index}.1", "middle": "middle_block.1", "output": f"output_blocks.{index}.1"}[block]
    return f"{prefix}.transformer_blocks.{t}.attn2"


def sdxl_shaped_unet(seed=4):
    """A UNet-only file that ComfyUI detects as SDXL-family (Segmind Vega's layout: SDXL's blocks,
    2048-wide context, fewer transformer layers), for testing that FlexIP refuses non-SD1.5 models."""
    def build():
        import comfy.ops
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
        from comfy.model_detection import model_config_from_unet

        unet = UNetModel(
            image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
            channel_mult=[1, 2, 4], transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_middle=1,
            transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], context_dim=2048, use_linear_in_transformer=True,
            adm_in_channels=2816, num_classes="sequential", num_head_channels=64, num_heads=-1,
            use_spatial_transformer=True, legacy=False, operations=comfy.ops.disable_weight_init)
        _randomise(unet, torch.Generator().manual_seed(seed))
        sd = unet.state_dict()
        detected = type(model_config_from_unet(sd, "")).__name__
        assert detected == "Segmind_Vega", f"ComfyUI detects this UNet as {detected}"
        return sd
    return _cached("diffusion_models", "sdxl-shaped-unet", build)


def misnamed_dinov2():
    """DINOv2-L as transformers 5 saves it (attention.q_proj ...): ComfyUI loads it with missing
    weights and only logs a warning, so the encoder's output is garbage."""
    def build():
        from safetensors.torch import load_file

        from flexip_core.encoders import DINOV2_HUB_TO_TRANSFORMERS5
        sd = load_file(dinov2_large())
        for hub, new in DINOV2_HUB_TO_TRANSFORMERS5:
            sd = {k.replace(hub, new): v for k, v in sd.items()}
        return sd
    return _cached("clip_vision", "dinov2-large-transformers5-names", build)
