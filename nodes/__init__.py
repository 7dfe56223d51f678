"""ComfyUI nodes: thin glue from ComfyUI's types to flexip_core."""
from .adapters import PersonalizationAdapter, PreservationAdapter
from .apply import GatedApply
from .loader import FlexIPLoader
from .reference import ReferenceEncoder
from .schedule import FlexIPGammaSchedule, FlexIPGammaSweep
from .score import FlexIPScore
from .subject import LoadSubject, SaveSubject

NODE_CLASS_MAPPINGS = {
    "FlexIPLoader": FlexIPLoader,
    "FlexIPReferenceEncoder": ReferenceEncoder,
    "FlexIPSaveSubject": SaveSubject,
    "FlexIPLoadSubject": LoadSubject,
    "FlexIPPreservationAdapter": PreservationAdapter,
    "FlexIPPersonalizationAdapter": PersonalizationAdapter,
    "FlexIPGatedApply": GatedApply,
    "FlexIPGammaSchedule": FlexIPGammaSchedule,
    "FlexIPGammaSweep": FlexIPGammaSweep,
    "FlexIPScore": FlexIPScore,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FlexIPLoader": "FlexIP Loader",
    "FlexIPReferenceEncoder": "FlexIP Reference Encoder",
    "FlexIPSaveSubject": "FlexIP Save Subject",
    "FlexIPLoadSubject": "FlexIP Load Subject",
    "FlexIPPreservationAdapter": "FlexIP Preservation Adapter",
    "FlexIPPersonalizationAdapter": "FlexIP Personalization Adapter",
    "FlexIPGatedApply": "FlexIP Gated Apply",
    "FlexIPGammaSchedule": "FlexIP Gamma Schedule",
    "FlexIPGammaSweep": "FlexIP Gamma Sweep",
    "FlexIPScore": "FlexIP Score",
}
