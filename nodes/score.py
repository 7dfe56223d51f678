"""FlexIPScore: each image of a batch scored against the reference (CLIP-I, DINO-I) and the prompt
(CLIP-T), with the encoders the reference was encoded with; the best image picked by one score or a
weighted sum. The metrics are flexip_core.metrics', the evaluation's (flexip_eval) own."""
import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.utils

from ..flexip_core.config import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
from ..flexip_core.encoders import comfy_clip_embeds, comfy_dino_cls
from ..flexip_core.metrics import reference_and_prompt_scores, weighted_total
from ..flexip_core.preprocess import CROPS, preprocess_reference
from .errors import FlexIPInputError
from .reference import describe, encoder_kind

NODE = "FlexIPScore"
METRICS = {"clip_i": "CLIP-I", "dino_i": "DINO-I", "clip_t": "CLIP-T"}
PICK_BY = ("weighted sum", *METRICS)
# DINO-I at the evaluation's resolution for DINOv2 (flexip_eval's [scoring.dino] default), not ComfyUI's 518 px.
DINO_RESOLUTION = 224


def weight_input(default, metric):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 10.0, "step": 0.05,
                      "tooltip": f"Weight of {METRICS[metric]} in the weighted sum (pick_by 'weighted sum'); "
                                 "0 leaves it out."})


def clip_spec(clip_vision):
    """The pixels ComfyUI's own CLIP vision preprocessing uses: its resolution, mean and std."""
    return EncoderSpec("image_embeds", 0, clip_vision.image_size, tuple(clip_vision.image_mean),
                       tuple(clip_vision.image_std))


def encode(clip_vision, features, spec, images, crop, mask=None):
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    pixels = preprocess_reference(images, spec, crop, mask).to(clip_vision.load_device)
    return features(clip_vision.model, pixels, spec).float().cpu()


def prompt_embedding(clip, prompt, width):
    """The prompt's projected CLIP text embedding [1, width] from a ComfyUI CLIP (a text encoder)."""
    inner = getattr(clip.cond_stage_model, getattr(clip.cond_stage_model, "clip", ""), clip.cond_stage_model)
    if getattr(inner, "options_default", (None, None, True))[2] is False:
        raise FlexIPInputError(NODE, "clip", "this text encoder has no text projection (an SD1.5 checkpoint's "
                               "CLIP stores none), so its embedding is not in the image encoder's space.",
                               "load the text tower of the same CLIP as clip_vision with Load CLIP (for CLIP "
                               "ViT-H/14 laion2B: open_clip_model.safetensors of CLIP-ViT-H-14-laion2B-s32B-b79K, "
                               "or SD2.x's text encoder), or leave clip unconnected.")
    tokens = clip.tokenize(prompt)
    clip.cond_stage_model.reset_clip_options()
    clip.cond_stage_model.set_clip_options({"projected_pooled": True})
    try:
        clip.load_model()
        pooled = clip.cond_stage_model.encode_token_weights(tokens)[1]
    finally:
        clip.cond_stage_model.reset_clip_options()
    pooled = pooled.float().cpu().reshape(1, -1)
    if pooled.shape[-1] != width:
        raise FlexIPInputError(NODE, "clip", f"the text encoder gives {pooled.shape[-1]}-d embeddings, the image "
                               f"encoder {width}-d: they are not the two towers of one CLIP.",
                               "load the text tower of the same CLIP as clip_vision, or leave clip unconnected.")
    return pooled


def scores_text(scores, totals, pick_by, best, backbones):
    lines = [f"{METRICS[m]}: {backbones[m]}" for m in scores]
    ranked = "weighted sum" if pick_by == "weighted sum" else METRICS[pick_by]
    for i in range(totals.shape[0]):
        cells = [f"{METRICS[m]} {scores[m][i].item():.4f}" for m in scores]
        if pick_by == "weighted sum":
            cells.append(f"weighted {totals[i].item():.4f}")
        lines.append(f"image {i}: " + ", ".join(cells) + ("  <- best" if i == best else ""))
    lines.append(f"best: image {best} by {ranked}")
    return "\n".join(lines)


class FlexIPScore:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Scores each image of a batch against the subject's reference with the encoders the reference "
                   "was encoded with: CLIP-I (CLIP image embeddings) and DINO-I (DINOv2 [CLS] at 224 px), cosine "
                   "similarities as in the paper's Table 1; and CLIP-T against the prompt when a text encoder of the "
                   "same CLIP is connected. Picks the best image by one score or a weighted sum. The numbers are "
                   "those of the evaluation (python -m flexip_eval) for the same images and models.")
    RETURN_TYPES = ("STRING", "FLOAT", "IMAGE", "INT")
    RETURN_NAMES = ("scores_text", "scores", "best_image", "best_index")
    OUTPUT_IS_LIST = (False, True, False, False)
    OUTPUT_TOOLTIPS = (
        "Every image's scores, one line each, with the backbone of each metric and the pick.",
        "The score pick_by ranks by, one number per image in batch order (a list of FLOATs).",
        "The best image of the batch (a batch of one).",
        "The best image's index in the batch, from 0.",
    )
    OUTPUT_NODE = True  # the scores show on the node and in /history even when nothing reads the outputs
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to score, e.g. the batch of a gamma sweep (VAE Decode)."}),
                "reference": ("IMAGE", {"tooltip": "The subject's reference image(s), as given to the Reference "
                                                   "Encoder; with several, each score is the mean over them."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP image encoder (Load CLIP Vision), e.g. the CLIP "
                                                           "ViT-H/14 the reference was encoded with: gives CLIP-I."}),
                "dino": ("CLIP_VISION", {"tooltip": "The DINOv2 encoder (Load CLIP Vision), e.g. the DINOv2-L the "
                                                    "reference was encoded with: gives DINO-I ([CLS] at 224 px)."}),
                "pick_by": (list(PICK_BY), {"default": "weighted sum",
                                            "tooltip": "What picks the best image: the weighted sum of the scores "
                                                       "(weights below) or one score."}),
                "weight_clip_i": weight_input(1.0, "clip_i"),
                "weight_dino_i": weight_input(1.0, "dino_i"),
                "weight_clip_t": weight_input(1.0, "clip_t"),
                "crop": (list(CROPS), {"default": "center", "tooltip": "How a non-square image becomes square before "
                                       "encoding: center crop (the evaluation's), pad with grey, or stretch."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Optional, for CLIP-T: the text encoder of the same CLIP as clip_vision "
                                             "(Load CLIP), e.g. open_clip's CLIP-ViT-H-14-laion2B file. An SD1.5 "
                                             "checkpoint's text encoder is another CLIP and is refused."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "The prompt CLIP-T compares the images with (needs clip)."}),
                "reference_mask": ("MASK", {"tooltip": "Optional: 1 on the subject in the reference, 0 on the "
                                                       "background, which is blanked to grey before CLIP-I and DINO-I."}),
            },
        }

    @torch.no_grad()
    def score(self, images, reference, clip_vision, dino, pick_by, weight_clip_i, weight_dino_i, weight_clip_t, crop,
              clip=None, prompt="", reference_mask=None):
        for name, batch in (("images", images), ("reference", reference)):
            if batch.shape[0] == 0:
                raise FlexIPInputError(NODE, name, "the image batch is empty.", "connect at least one image.")
        if pick_by not in PICK_BY:
            raise FlexIPInputError(NODE, "pick_by", f"{pick_by!r} is not a choice.", f"choose one of {list(PICK_BY)}.")
        for name, encoder, family in (("clip_vision", clip_vision, "clip"), ("dino", dino, "dinov2")):
            kind = encoder_kind(encoder)
            if kind[0] != family:
                raise FlexIPInputError(NODE, name, f"got {describe(kind)}, not a {'CLIP' if family == 'clip' else 'DINOv2'}"
                                       " image encoder.", "load it with Load CLIP Vision and connect it here (the "
                                       "CLIP and DINOv2 inputs may be swapped).")
        if clip is not None and not prompt.strip():
            raise FlexIPInputError(NODE, "prompt", "clip is connected but the prompt is empty.",
                                   "write the prompt the images were made with, or leave clip unconnected.")
        if reference_mask is not None:
            if reference_mask.shape[0] not in (1, reference.shape[0]):
                raise FlexIPInputError(NODE, "reference_mask", f"{reference_mask.shape[0]} masks for "
                                       f"{reference.shape[0]} references.", "give one mask, or one per reference.")
            if reference_mask.shape[-2:] != reference.shape[1:3]:
                reference_mask = F.interpolate(reference_mask[:, None].float(), size=reference.shape[1:3],
                                               mode="bilinear").squeeze(1)

        progress = comfy.utils.ProgressBar(3 if clip is not None else 2)
        clip_pixels = clip_spec(clip_vision)
        dino_pixels = EncoderSpec("cls", 0, DINO_RESOLUTION, IMAGENET_MEAN, IMAGENET_STD)
        # One image at a time, as the evaluation encodes them (same batch size: same rounding).
        clip_images = torch.cat([encode(clip_vision, comfy_clip_embeds, clip_pixels, image[None], crop) for image in images])
        clip_refs = torch.cat([encode(clip_vision, comfy_clip_embeds, clip_pixels, ref[None], crop,
                                      None if reference_mask is None else reference_mask[min(i, reference_mask.shape[0] - 1)][None])
                               for i, ref in enumerate(reference)])
        progress.update(1)
        dino_images = torch.cat([encode(dino, comfy_dino_cls, dino_pixels, image[None], crop) for image in images])
        dino_refs = torch.cat([encode(dino, comfy_dino_cls, dino_pixels, ref[None], crop,
                                      None if reference_mask is None else reference_mask[min(i, reference_mask.shape[0] - 1)][None])
                               for i, ref in enumerate(reference)])
        progress.update(1)
        prompt_embeds = None
        if clip is not None:
            prompt_embeds = prompt_embedding(clip, prompt, clip_images.shape[-1])
            progress.update(1)
        scores = reference_and_prompt_scores(clip_images, clip_refs[None], dino_images, dino_refs[None],
                                             clip_images, prompt_embeds)
        for name, values in scores.items():
            if not torch.isfinite(values).all():
                source = {"clip_i": "clip_vision", "dino_i": "dino", "clip_t": "clip"}[name]
                raise FlexIPInputError(NODE, source, f"{METRICS[name]} is NaN: the encoder returned NaN (its file's "
                                       "tensor names do not match what ComfyUI loads).", "use the original model file.")
        if pick_by == "weighted sum":
            weights = {"clip_i": weight_clip_i, "dino_i": weight_dino_i, "clip_t": weight_clip_t if clip is not None else 0.0}
            try:
                ranking = weighted_total(scores, weights)
            except ValueError as e:
                raise FlexIPInputError(NODE, "weight_clip_i", f"{e}.", "give a weight above 0 to a scored metric.") from None
        elif pick_by not in scores:
            raise FlexIPInputError(NODE, "pick_by", "CLIP-T needs a text encoder.", "connect clip and a prompt, "
                                   "or pick by another score.")
        else:
            ranking = scores[pick_by].double()
        best = int(torch.argmax(ranking))
        backbones = {"clip_i": describe(encoder_kind(clip_vision)), "dino_i": f"{describe(encoder_kind(dino))} [CLS] "
                     f"at {DINO_RESOLUTION} px", "clip_t": f"{describe(encoder_kind(clip_vision))} and its text tower"}
        text = scores_text(scores, ranking, pick_by, best, backbones)
        values = [float(v) for v in ranking]
        return {"ui": {"text": [text], "scores": values, "best_index": [best],
                       **{name: [float(v) for v in s] for name, s in scores.items()}},
                "result": (text, values, images[best:best + 1], best)}
