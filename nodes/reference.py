"""ReferenceEncoder: one or more reference images -> FLEXIP_REFERENCE (CLIP ViT-H [CLS] + DINOv2-L patches)."""
import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.utils

from ..flexip_core.encoders import comfy_clip_embeds, comfy_dino_patches
from ..flexip_core.preprocess import CROPS, preprocess_reference
from ..flexip_core.reference import COMBINES, ReferenceFeatures
from .errors import FlexIPInputError

NODE = "ReferenceEncoder"
CLIP_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (the ViT-H image encoder IP-Adapter uses), in models/clip_vision"
DINO_FILE = "dinov2-large model.safetensors from facebook/dinov2-large, in models/clip_vision"
# (model class, hidden width, layers) of the encoders a user may load by mistake.
KNOWN_ENCODERS = {
    ("clip", 1280, 32): "CLIP ViT-H/14",
    ("clip", 1024, 24): "CLIP ViT-L/14",
    ("clip", 1664, 48): "CLIP ViT-bigG/14",
    ("siglip", 1152, 27): "SigLIP",
    ("dinov2", 1024, 24): "DINOv2-L/14",
    ("dinov2", 1536, 40): "DINOv2-G/14",
}


def encoder_kind(clip_vision):
    """(family, hidden width, layers) of a ComfyUI CLIP_VISION, read from its modules."""
    model = clip_vision.model
    if hasattr(model, "vision_model"):
        vm = model.vision_model
        family = "siglip" if vm.embeddings.class_embedding is None else "clip"
        return family, vm.embeddings.patch_embedding.out_channels, len(vm.encoder.layers)
    if hasattr(model, "embeddings") and hasattr(model.embeddings, "patch_embeddings"):
        return "dinov2", model.embeddings.patch_embeddings.projection.out_channels, len(model.encoder.layer)
    return type(model).__name__, None, None


def describe(kind):
    return KNOWN_ENCODERS.get(kind) or f"an unknown {kind[0]} encoder (width {kind[1]}, {kind[2]} layers)"


def check_encoder(clip_vision, input_name, expected, expected_file, other_input):
    kind = encoder_kind(clip_vision)
    if kind == expected:
        return
    swapped = " The CLIP and DINOv2 inputs look swapped." if kind[0] != expected[0] and kind[0] in ("clip", "dinov2") else ""
    raise FlexIPInputError(NODE, input_name,
                           f"got {describe(kind)}, FlexIP needs {KNOWN_ENCODERS[expected]}.{swapped}",
                           f"load {expected_file} with a Load CLIP Vision node and connect it here"
                           f"{' (and the other encoder to ' + other_input + ')' if swapped else ''}.")


def run_encoder(clip_vision, features, spec, pixels):
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    return features(clip_vision.model, pixels.to(clip_vision.load_device), spec).float().cpu()


class ReferenceEncoder:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Encodes the subject's reference image(s) with CLIP ViT-H/14 (global identity) and "
                   "DINOv2-L/14 (fine detail) at the resolution the FlexIP file was trained with. "
                   "A batch of images is several references of one subject.")
    RETURN_TYPES = ("FLEXIP_REFERENCE",)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The subject's CLIP [CLS] embeddings and DINOv2 patch tokens, for both adapters.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flexip": ("FLEXIP", {"tooltip": "From FlexIPLoader: sets the encoders' resolution and features."}),
                "image": ("IMAGE", {"tooltip": "The subject. A batch of several images is several references of the same subject."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP ViT-H/14 from Load CLIP Vision: " + CLIP_FILE + "."}),
                "dino": ("CLIP_VISION", {"tooltip": "DINOv2-L/14 from Load CLIP Vision: " + DINO_FILE + "."}),
                "crop": (list(CROPS), {"default": "center", "tooltip": "How a non-square image becomes square: "
                                       "center crop, pad with grey, or stretch."}),
                "combine": (list(COMBINES), {"default": "average", "tooltip": "Several references: average their "
                                             "features, or concat (each reference adds its own tokens)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional: 1 on the subject, 0 on the background, which is blanked to grey."}),
            },
        }

    @torch.no_grad()  # outside ComfyUI's executor (scripts, training's validation) too
    def encode(self, flexip, image, clip_vision, dino, crop, combine, mask=None):
        config = flexip.config
        if image.shape[0] == 0:
            raise FlexIPInputError(NODE, "image", "the image batch is empty.", "connect at least one reference image.")
        check_encoder(clip_vision, "clip_vision", ("clip", 1280, 32), CLIP_FILE, "dino")
        check_encoder(dino, "dino", ("dinov2", 1024, 24), DINO_FILE, "clip_vision")
        if mask is not None:
            if mask.shape[0] not in (1, image.shape[0]):
                raise FlexIPInputError(NODE, "mask", f"{mask.shape[0]} masks for {image.shape[0]} images.",
                                       "give one mask, or one mask per reference image.")
            if mask.shape[-2:] != image.shape[1:3]:
                mask = F.interpolate(mask[:, None].float(), size=image.shape[1:3], mode="bilinear").squeeze(1)

        progress = comfy.utils.ProgressBar(2)
        clip_embeds = run_encoder(clip_vision, comfy_clip_embeds, config.clip,
                                  preprocess_reference(image, config.clip, crop, mask))
        progress.update(1)
        dino_patches = run_encoder(dino, comfy_dino_patches, config.dino,
                                   preprocess_reference(image, config.dino, crop, mask))
        progress.update(1)
        reference = ReferenceFeatures(clip_embeds, dino_patches, combine)
        for name, value, expected_file in (("clip_vision", reference.clip_embeds, CLIP_FILE),
                                           ("dino", reference.dino_patches, DINO_FILE)):
            if not torch.isfinite(value).all():
                raise FlexIPInputError(NODE, name, "the encoder returned NaN or Inf: its file's tensor names do "
                                       "not match what ComfyUI loads (ComfyUI then logs 'missing clip vision'); a "
                                       "DINOv2 saved by transformers 5 names its attention 'attention.q_proj' "
                                       "where ComfyUI needs the hub's 'attention.attention.query'.",
                                       f"use the original {expected_file}.")
        return (reference,)
