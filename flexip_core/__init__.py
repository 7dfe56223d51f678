"""FlexIP in plain PyTorch: the method shared by the ComfyUI nodes, training and evaluation.

Nothing here imports ComfyUI; ComfyUI objects are read through their attributes only.
"""
from .adapters import PersonalizationAdapter, PreservationAdapter
from .config import CONFIGS, SD15, TINY, FlexIPConfig
from .injection import COND, UNCOND, gated_attention
from .model import FlexIP
from .resampler import Resampler

__all__ = [
    "CONFIGS", "COND", "SD15", "TINY", "UNCOND", "FlexIP", "FlexIPConfig",
    "PersonalizationAdapter", "PreservationAdapter", "Resampler", "gated_attention",
]
