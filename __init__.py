"""comfyui-flexip: FlexIP for ComfyUI (the pack's entry point).

The method lives in flexip_core (plain PyTorch), the nodes in nodes/, the gamma widget in js/.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
