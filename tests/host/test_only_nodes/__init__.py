"""A node the test host loads beside the pack (never shipped): it makes an empty image batch,
which no stock node can, so the tests can send one to ReferenceEncoder through the API."""
import torch


class FlexIPTestEmptyImageBatch:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return (torch.zeros(0, 64, 64, 3),)


NODE_CLASS_MAPPINGS = {"FlexIPTestEmptyImageBatch": FlexIPTestEmptyImageBatch}
