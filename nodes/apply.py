"""GatedApply: patch the SD1.5 UNet's 16 cross-attentions with FlexIP's gated injection."""
import logging
import math

import torch

import comfy.model_management
from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import WrappersMP

from ..flexip_core.patch import GatedAttention, stack_patches, unet_mismatch
from ..flexip_core.projections import layer_name
from ..flexip_core.schedule import SigmaFractions, SigmaSchedule
from ..flexip_core.slider import MappedSchedule, blend_weight
from .errors import FlexIPInputError
from .schedule import sweep_batch_error

NODE = "GatedApply"
log = logging.getLogger("comfyui-flexip")
# transformer_options entry: {layer key: the latest FlexIP patch}, for stack_with_other_packs.
FLEXIP_PATCHES = "flexip_attn2"
WRAPPER_KEY = "comfyui-flexip"


def check_base_model(model, config):
    """The model must have exactly the cross-attention layers, widths and context FlexIP was trained for."""
    problem = unet_mismatch(model.model.diffusion_model, config)
    if problem:
        raise FlexIPInputError(NODE, "model", f"this model ({type(model.model.model_config).__name__}: {problem}",
                               "load an SD1.5 checkpoint (SDXL, SD2 and other models are not supported).")


def log_call(key, chunks, gamma):
    # The host tests count patch calls per layer and CFG chunk, and read the gamma used, from this DEBUG line.
    if log.isEnabledFor(logging.DEBUG):
        log.debug("FlexIP attn2 %s chunks %s gamma %r", layer_name(key), list(chunks),
                  gamma.tolist() if torch.is_tensor(gamma) else gamma)


def stack_with_other_packs(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """The UNet's DIFFUSION_MODEL wrapper: at each call FlexIP's patches run the other packs' attn2
    patches on their layers, whichever order the graph applied FlexIP and those packs in."""
    replace = transformer_options.get("patches_replace", {})
    if FLEXIP_PATCHES in transformer_options and "attn2" in replace:
        attn2 = stack_patches(replace["attn2"], transformer_options[FLEXIP_PATCHES])
        transformer_options = {**transformer_options, "patches_replace": {**replace, "attn2": attn2}}
    return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


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
                                           "exactly (preserve). A weight file with a calibrated slider blends by gamma^k (docs/nodes.md). "
                                           "Not used when a schedule or a sweep is connected."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                                   "tooltip": "Overall weight w of FlexIP; 0 gives the model without FlexIP."}),
            "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "Fraction of the sampling at which FlexIP starts."}),
            "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "Fraction of the sampling at which FlexIP stops."}),
        }, "optional": {
            "schedule": ("FLEXIP_GAMMA_SCHEDULE", {
                "tooltip": "Optional, from FlexIP Gamma Schedule: gamma over the sampling steps and per UNet block, "
                           "in place of the gamma slider."}),
            "sweep": ("FLEXIP_GAMMA_SWEEP", {
                "tooltip": "Optional, from FlexIP Gamma Sweep: one gamma per image of the latent batch, in place of "
                           "the gamma slider, so one sampler run gives the whole sweep."}),
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
    def apply(self, model, flexip, preservation, personalization, gamma, strength, start_at, end_at,
              schedule=None, sweep=None):
        config = flexip.config
        check_base_model(model, config)
        if schedule is not None and sweep is not None:
            raise FlexIPInputError(NODE, "sweep", "a schedule and a sweep are both connected, and gamma comes from one "
                                   "of them.", "disconnect the schedule or the sweep.")
        patched = model.clone()
        sampling = model.get_model_object("model_sampling")
        sigma_window = None if (start_at, end_at) == (0.0, 1.0) else (
            sampling.percent_to_sigma(start_at), sampling.percent_to_sigma(end_at))
        if sweep is not None:
            gamma = torch.tensor(sweep)  # [N]: GatedAttention gives row i of every CFG chunk gamma i
        # The weight file's slider map (flexip_core.slider): the slider's gamma -> the branches' blend weight.
        gamma = blend_weight(gamma, flexip.slider_exponent)
        if schedule is not None:  # one for all layers: the sigma table is built once
            schedule = SigmaSchedule(schedule, SigmaFractions(sampling.percent_to_sigma))
            if flexip.slider_exponent != 1.0:
                schedule = MappedSchedule(schedule, flexip.slider_exponent)
        existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        flexip_patches = dict(patched.model_options.get("transformer_options", {}).get(FLEXIP_PATCHES, {}))
        device = flexip.load()  # the projections run where ComfyUI's model management put the module
        kv_device = comfy.model_management.intermediate_device()
        for key in flexip.projections.keys:
            kv_p, kv_s = {}, {}
            for kind in preservation:
                branches = flexip.projections[key](preservation[kind].to(device), personalization[kind].to(device))
                (kv_p[kind], kv_s[kind]) = [(k.to(kv_device), v.to(kv_device)) for k, v in branches]
            wrapped = existing.get(key) or existing.get(key[:2])  # another pack's patch on this layer
            flexip_patches[key] = GatedAttention(key, kv_p, kv_s, gamma, strength, optimized_attention, sigma_window,
                                                 wrapped, on_call=log_call, schedule=schedule,
                                                 batch_error=sweep_batch_error)
            patched.set_model_attn2_replace(flexip_patches[key], *key)
        # Another pack's patch applied later (or under a key FlexIP's shadows) is found at call time.
        patched.model_options["transformer_options"][FLEXIP_PATCHES] = flexip_patches
        if not patched.get_wrappers(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY):
            patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, stack_with_other_packs)
        return (patched,)
