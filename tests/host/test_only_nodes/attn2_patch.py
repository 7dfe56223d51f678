"""Another pack's attn2 replace patch on every SD1.5 cross-attention, for the stacking tests:
the layer's attention times `scale`, under two-part keys (block, index) as ComfyUI_IPAdapter_plus
registers them for SD1.5, or three-part keys as FlexIP does. Each call is logged at DEBUG."""
import logging

from comfy.ldm.modules.attention import optimized_attention

log = logging.getLogger("flexip-test-only")
SD15_LAYERS = [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + [("output", i) for i in range(3, 12)]


class ScaledAttention:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, q, k, v, extra_options):
        block, index = extra_options["block"]
        log.debug("test-only attn2 %s_%s chunks %s", block, index, list(extra_options["cond_or_uncond"]))
        return optimized_attention(q, k, v, extra_options["n_heads"]) * self.scale


class FlexIPTestAttn2Patch:
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scale": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0}),
                             "key_parts": ("INT", {"default": 2, "min": 2, "max": 3})}}

    def apply(self, model, scale, key_parts):
        patched = model.clone()
        for block, index in SD15_LAYERS:
            patched.set_model_attn2_replace(ScaledAttention(scale), block, index, 0 if key_parts == 3 else None)
        return (patched,)
