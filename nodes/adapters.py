"""PreservationAdapter and PersonalizationAdapter: reference (and prompt) -> P and S tokens.

Each output holds the tokens for both passes of CFG: COND from the inputs, UNCOND as training
drops them (P from a zeroed reference; S from the negative prompt with a zeroed [CLS]).
"""
import torch

import comfy.model_management

from ..flexip_core.injection import COND, UNCOND
from ..flexip_core.reference import personalization_tokens, preservation_tokens
from .errors import FlexIPInputError


@torch.no_grad()
def run_adapter(flexip, adapter, fn, inputs):
    """{kind: fn(adapter, *args)} for inputs {kind: args} (tensors or ReferenceFeatures), run where
    ComfyUI's model management loads the FlexIP module (flexip, a ManagedFlexIP, holds adapter)."""
    device = flexip.load()
    return {kind: fn(adapter, *(a.to(device) for a in args)).float().to(comfy.model_management.intermediate_device())
            for kind, args in inputs.items()}


def text_embeds(node, input_name, conditioning, config):
    """The prompt's token embeddings [1, 77 * k, text_dim] from a CONDITIONING."""
    if not conditioning:
        raise FlexIPInputError(node, input_name, "the conditioning is empty.", "connect a CLIP Text Encode output.")
    tokens = conditioning[0][0]
    if tokens.shape[-1] != config.text_dim:
        raise FlexIPInputError(node, input_name, f"the prompt embedding is {tokens.shape[-1]} wide; FlexIP "
                               f"({config.name}) needs SD1.5's {config.text_dim}-wide CLIP text encoder.",
                               "encode the prompt with the CLIP of the SD1.5 checkpoint.")
    return tokens[:1].float()


class PreservationAdapter:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Preservation adapter: learnable queries and the CLIP [CLS] tokens resampled over the DINOv2 "
                   "patches give the tokens P that keep the subject's identity and detail (gamma -> 1).")
    RETURN_TYPES = ("FLEXIP_PRESERVATION",)
    RETURN_NAMES = ("preservation",)
    OUTPUT_TOOLTIPS = ("The preservation tokens P, for GatedApply.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flexip": ("FLEXIP", {"tooltip": "From FlexIPLoader."}),
            "reference": ("FLEXIP_REFERENCE", {"tooltip": "From ReferenceEncoder."}),
        }}

    def apply(self, flexip, reference):
        return (run_adapter(flexip, flexip.preservation, preservation_tokens,
                            {COND: (reference,), UNCOND: (reference.dropped(),)}),)


class PersonalizationAdapter:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Personalization adapter: every prompt token attends to the subject's CLIP [CLS] tokens, giving "
                   "tokens S that follow the prompt while carrying the subject's look (gamma -> 0). "
                   "Long prompts (more than 77 tokens) work.")
    RETURN_TYPES = ("FLEXIP_PERSONALIZATION",)
    RETURN_NAMES = ("personalization",)
    OUTPUT_TOOLTIPS = ("The personalization tokens S (one per prompt token), for GatedApply.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flexip": ("FLEXIP", {"tooltip": "From FlexIPLoader."}),
                "reference": ("FLEXIP_REFERENCE", {"tooltip": "From ReferenceEncoder."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt, from CLIP Text Encode (the one the sampler uses)."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt the sampler uses. Without it, the "
                                              "uncond pass uses the positive prompt with the subject dropped."}),
            },
        }

    def apply(self, flexip, reference, positive, negative=None):
        config = flexip.config
        cond_text = text_embeds("PersonalizationAdapter", "positive", positive, config)
        uncond_text = cond_text if negative is None else text_embeds("PersonalizationAdapter", "negative", negative, config)
        return (run_adapter(flexip, flexip.personalization, personalization_tokens,
                            {COND: (cond_text, reference), UNCOND: (uncond_text, reference.dropped())}),)
