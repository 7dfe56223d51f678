"""A test-only output node that reports, from inside the server, what holds memory: the models in
ComfyUI's current_loaded_models and how many FlexIP modules are still alive (after a full garbage
collection). It runs on every prompt (IS_CHANGED is NaN)."""
import gc

import torch

import comfy.model_management


class FlexIPTestLoadedModels:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "report"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {"after": ("MODEL", {"tooltip": "Runs after this model's node."})}}

    @classmethod
    def IS_CHANGED(cls, after=None):
        return float("nan")

    def report(self, after=None):
        gc.collect()
        loaded = [m.model.model.__class__.__name__ for m in comfy.model_management.current_loaded_models
                  if m.model is not None]
        alive = sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Module) and type(o).__name__ == "FlexIP")
        return {"ui": {"loaded_models": loaded, "flexip_modules": [alive]}}
