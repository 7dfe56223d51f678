"""Reference features Z(C) and Z(D), by two routes that must give the same numbers:

- ComfyUI: the CLIP_VISION objects of the stock CLIPVisionLoader (HF-format CLIP ViT-H/14 and
  DINOv2-L files in models/clip_vision). Used by the nodes. Read through attributes only, so
  this module never imports ComfyUI.
- Training: open_clip's ViT-H-14 and transformers' Dinov2Model, built from the same HF-format
  files, so a researcher trains on exactly the features the nodes will give.

Both routes take pixels from preprocess.preprocess_reference and read the output named by the
configuration's EncoderSpec (feature and resolution are recorded in every weight file).
"""
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# transformers >= 5 renamed DINOv2's attention weights; hub files and ComfyUI use the old names.
DINOV2_HUB_TO_TRANSFORMERS5 = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)

DINOV2_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                    patch_size=14, image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0)
CLIP_VIT_H_LAYERS = 32


def _check_feature(spec, *supported):
    if spec.feature not in supported:
        raise ValueError(f"encoder feature {spec.feature!r} is not supported (supported: {', '.join(supported)})")


def interpolate_position_embeddings(position_embeddings, grid):
    """[1, 1 + n*n, d] position embeddings (a [CLS] then an n x n grid) -> [1, 1 + grid*grid, d].

    Bicubic in float32 without antialiasing: what transformers' Dinov2Embeddings does, so the
    ComfyUI route (whose DINOv2 only runs at its native 518 px) matches the training route.
    """
    n = int(round((position_embeddings.shape[1] - 1) ** 0.5))
    if n == grid:
        return position_embeddings
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]
    patch_pos = patch_pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat((cls_pos, patch_pos), dim=1)


# --- ComfyUI route -------------------------------------------------------------------------

def comfy_clip_embeds(clip_model, pixels, spec):
    """clip_model: a ComfyUI CLIP_VISION's .model (CLIPVisionModelProjection) -> [B, dim]."""
    _check_feature(spec, "image_embeds")
    return clip_model(pixel_values=pixels, intermediate_output=-2)[2]


def comfy_dino_tokens(dino_model, pixels):
    """dino_model: a ComfyUI CLIP_VISION's .model (image_encoders.dino2.Dinov2Model) -> the last
    layer's normed tokens [B, 1 + M, dim], [CLS] first.

    Runs the model's own layers, with the position embeddings interpolated to the input's grid.
    """
    emb = dino_model.embeddings
    x = emb.patch_embeddings(pixels)
    cls = emb.cls_token.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
    grid = pixels.shape[-1] // emb.patch_embeddings.projection.kernel_size[0]
    pos = interpolate_position_embeddings(emb.position_embeddings, grid).to(device=x.device, dtype=x.dtype)
    x, _ = dino_model.encoder(torch.cat((cls, x), dim=1) + pos)
    return dino_model.layernorm(x)


def comfy_dino_patches(dino_model, pixels, spec):
    """The patch tokens [B, M, dim] FlexIP reads."""
    _check_feature(spec, "patch_tokens")
    return comfy_dino_tokens(dino_model, pixels)[:, 1:]


def comfy_dino_cls(dino_model, pixels, spec):
    """The [CLS] token [B, dim] DINO-I compares (transformers' pooler_output)."""
    _check_feature(spec, "cls")
    return comfy_dino_tokens(dino_model, pixels)[:, 0]


# --- Training route (open_clip + transformers) ---------------------------------------------

def open_clip_state_dict_from_hf(sd):
    """HF CLIPVisionModelWithProjection weights -> open_clip VisionTransformer weights."""
    out = {
        "class_embedding": sd["vision_model.embeddings.class_embedding"],
        "conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "proj": sd["visual_projection.weight"].t().contiguous(),
    }
    layer = 0
    while f"vision_model.encoder.layers.{layer}.layer_norm1.weight" in sd:
        hf = f"vision_model.encoder.layers.{layer}."
        oc = f"transformer.resblocks.{layer}."
        for part in ("weight", "bias"):
            out[oc + f"attn.in_proj_{part}"] = torch.cat(
                [sd[hf + f"self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")])
            out[oc + f"attn.out_proj.{part}"] = sd[hf + f"self_attn.out_proj.{part}"]
            out[oc + f"ln_1.{part}"] = sd[hf + f"layer_norm1.{part}"]
            out[oc + f"ln_2.{part}"] = sd[hf + f"layer_norm2.{part}"]
            out[oc + f"mlp.c_fc.{part}"] = sd[hf + f"mlp.fc1.{part}"]
            out[oc + f"mlp.c_proj.{part}"] = sd[hf + f"mlp.fc2.{part}"]
        layer += 1
    return out


def load_open_clip_vit_h(path):
    """open_clip's ViT-H-14 image tower from the HF-format file users keep in models/clip_vision."""
    import open_clip
    from open_clip.model import _build_vision_tower

    cfg = open_clip.get_model_config("ViT-H-14")
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
    visual.load_state_dict(open_clip_state_dict_from_hf(load_file(path)))
    return visual.eval()


def load_transformers_dinov2(path):
    """transformers' Dinov2Model (large) from a hub-format file, whichever names this transformers uses."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**DINOV2_LARGE))
    sd = load_file(path)
    if "encoder.layer.0.attention.q_proj.weight" in model.state_dict():
        for old, new in DINOV2_HUB_TO_TRANSFORMERS5:
            sd = {k.replace(old, new): v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


def open_clip_embeds(visual, pixels, spec):
    """open_clip VisionTransformer -> projected [CLS] [B, dim] (the same as HF's image_embeds)."""
    _check_feature(spec, "image_embeds")
    return visual(pixels)


def transformers_dino_patches(model, pixels, spec):
    """transformers Dinov2Model -> the last layer's normed patch tokens [B, M, dim]."""
    _check_feature(spec, "patch_tokens")
    return model(pixel_values=pixels).last_hidden_state[:, 1:]
