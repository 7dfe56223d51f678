"""GatedApply: patch the SD1.5 UNet's 16 cross-attentions with FlexIP's gated injection."""
import copy
import logging
import math

import torch

from comfy.ldm.modules.attention import optimized_attention

from ..flexip_core.injection import inject, weighted_branches
from ..flexip_core.projections import layer_name
from .errors import FlexIPInputError

NODE = "GatedApply"
log = logging.getLogger("comfyui-flexip")
# Cross-attention context widths of the base models a user may connect by mistake.
CONTEXT_WIDTHS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def cross_attentions(diffusion_model):
    """{(block, index, transformer_index): attn2} of a UNet, keyed as ComfyUI's attn2 patches are."""
    blocks = [("input", i, b) for i, b in enumerate(getattr(diffusion_model, "input_blocks", []))]
    if hasattr(diffusion_model, "middle_block"):
        blocks.append(("middle", 0, diffusion_model.middle_block))
    blocks += [("output", i, b) for i, b in enumerate(getattr(diffusion_model, "output_blocks", []))]
    found = {}
    for name, index, block in blocks:
        for module in block.modules():
            for t, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                if getattr(transformer, "attn2", None) is not None:
                    found[(name, index, t)] = transformer.attn2
    return found


def check_base_model(model, config):
    """The model must have exactly the cross-attention layers, widths and context FlexIP was trained for."""
    base = type(model.model.model_config).__name__
    layers = cross_attentions(model.model.diffusion_model)
    widths = {attn.to_k.in_features for attn in layers.values()}
    expected = dict(config.layers)
    if widths != {config.context_dim} or set(layers) != set(expected) or any(
            layers[key].to_k.out_features != inner for key, inner in expected.items()):
        seen = ", ".join(CONTEXT_WIDTHS.get(w, f"{w}-wide") for w in sorted(widths)) or "no cross-attention"
        raise FlexIPInputError(NODE, "model", f"this model ({base}: {len(layers)} cross-attention layers, context "
                               f"{seen}) is not the SD1.5 UNet FlexIP ({config.name}) was trained for "
                               f"({len(expected)} layers, context {config.context_dim}).",
                               "load an SD1.5 checkpoint (SDXL, SD2 and other models are not supported).")


class GatedAttention:
    """One layer's attn2 replacement: the layer's own attention (or the patch it wraps) plus FlexIP."""

    def __init__(self, key, kv_p, kv_s, gamma, strength, sigma_window=None, wrapped=None):
        self.key, self.name = key, layer_name(key)
        self.kv_p, self.kv_s = kv_p, kv_s
        self.gamma, self.strength = gamma, strength
        self.sigma_window = sigma_window  # (start, end) sigmas, or None to act at every step
        self.wrapped = wrapped
        # Weighted, stacked K/V per batch layout: built at the first step, reused at every other.
        self.terms = {}

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options. The K/V never change after apply, so
        # clones share them; the wrapped patch is copied with the same memo, so it stays the
        # object the clone's patch table holds (ComfyUI calls .to(device) on that one).
        clone = copy.copy(self)
        clone.wrapped = copy.deepcopy(self.wrapped, memo)
        return clone

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]

        def attention(q_, k_, v_, heads_):
            return optimized_attention(q_, k_, v_, heads_, attn_precision=extra_options.get("attn_precision"))

        base = self.wrapped(q, k, v, extra_options) if self.wrapped else attention(q, k, v, heads)
        if self.strength == 0:
            return base
        if self.sigma_window is not None:  # only then: .item() waits for the GPU
            sigma = extra_options["sigmas"].max().item()
            if not self.sigma_window[1] <= sigma <= self.sigma_window[0]:
                return base
        chunks = tuple(extra_options["cond_or_uncond"])
        if log.isEnabledFor(logging.DEBUG):
            log.debug("FlexIP attn2 %s chunks %s", self.name, list(chunks))
        layout = (q.device, q.dtype, chunks, q.shape[0])
        if layout not in self.terms:
            self.terms[layout] = weighted_branches(self.kv_p, self.kv_s, self.gamma, self.strength,
                                                   chunks, q.shape[0], q)
        return inject(q, base, self.terms[layout], heads, attention)


class GatedApply:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Applies FlexIP to an SD1.5 model. gamma blends the two adapters in every cross-attention: "
                   "1 keeps the subject exactly (preservation), 0 follows the prompt freely (personalization).")
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with FlexIP's 16 cross-attention patches; connect it to the sampler.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.5 model."}),
            "flexip": ("FLEXIP", {"tooltip": "From FlexIPLoader."}),
            "preservation": ("FLEXIP_PRESERVATION", {"tooltip": "From PreservationAdapter."}),
            "personalization": ("FLEXIP_PERSONALIZATION", {"tooltip": "From PersonalizationAdapter."}),
            "gamma": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "display": "slider",
                                "tooltip": "0 = follow the prompt freely (personalize), 1 = keep the subject "
                                           "exactly (preserve)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                                   "tooltip": "Overall weight w of FlexIP; 0 gives the model without FlexIP."}),
            "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "Fraction of the sampling at which FlexIP starts."}),
            "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "Fraction of the sampling at which FlexIP stops."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, gamma, strength, start_at, end_at):
        # ComfyUI's own range check lets NaN through (every comparison with NaN is false).
        for name, value, low, high in (("gamma", gamma, 0.0, 1.0), ("strength", strength, 0.0, 2.0),
                                       ("start_at", start_at, 0.0, 1.0), ("end_at", end_at, 0.0, 1.0)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                return f"{NODE}, input '{name}': {value!r} is not a number from {low} to {high}. Fix: set {name} between {low} and {high}."
        if start_at > end_at:
            return f"{NODE}, input 'start_at': start_at {start_at} is after end_at {end_at}. Fix: make start_at <= end_at."
        return True

    @torch.no_grad()
    def apply(self, model, flexip, preservation, personalization, gamma, strength, start_at, end_at):
        config = flexip.config
        check_base_model(model, config)
        patched = model.clone()
        sampling = model.get_model_object("model_sampling")
        sigma_window = None if (start_at, end_at) == (0.0, 1.0) else (
            sampling.percent_to_sigma(start_at), sampling.percent_to_sigma(end_at))
        existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        for key in flexip.projections.keys:
            kv_p, kv_s = {}, {}
            for kind in preservation:
                (kv_p[kind], kv_s[kind]) = flexip.projections[key](preservation[kind], personalization[kind])
            wrapped = existing.get(key) or existing.get(key[:2])  # another pack's patch on this layer
            patched.set_model_attn2_replace(
                GatedAttention(key, kv_p, kv_s, gamma, strength, sigma_window, wrapped), *key)
        return (patched,)
