"""Nodes the test host loads beside the pack (never shipped): an empty image batch, which no stock
node can make, so the tests can send one to ReferenceEncoder through the API; and another pack's
attn2 patch, for the stacking tests."""
import torch

from .attn2_patch import FlexIPTestAttn2Patch
from .memory_probe import FlexIPTestLoadedModels


class FlexIPTestEmptyImageBatch:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return (torch.zeros(0, 64, 64, 3),)


NODE_CLASS_MAPPINGS = {"FlexIPTestEmptyImageBatch": FlexIPTestEmptyImageBatch,
                       "FlexIPTestAttn2Patch": FlexIPTestAttn2Patch,
                       "FlexIPTestLoadedModels": FlexIPTestLoadedModels}
