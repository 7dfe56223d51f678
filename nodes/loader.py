"""FlexIPLoader: a FlexIP weight file from models/flexip."""
import os

import folder_paths

from ..flexip_core.slider import slider_exponent
from ..flexip_core.weights import FlexIPWeightError, load_flexip, read_flexip_header
from .errors import FlexIPInputError
from .managed import ManagedFlexIP

FOLDER = "flexip"
# Registered at import, beside any "flexip:" entries of the user's extra_model_paths.yaml.
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


class FlexIPLoader:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Loads FlexIP weights (a .safetensors file in models/flexip). No official FlexIP "
                   "weights exist: train them with this pack's training code.")
    RETURN_TYPES = ("FLEXIP",)
    RETURN_NAMES = ("flexip",)
    OUTPUT_TOOLTIPS = ("The FlexIP adapters and per-layer projections, with the configuration they were trained with.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flexip_name": (folder_paths.get_filename_list(FOLDER), {
                "tooltip": "A FlexIP weight file in models/flexip (or a 'flexip:' folder of extra_model_paths.yaml)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, flexip_name):
        # A file replaced under the same name is loaded again.
        path = folder_paths.get_full_path(FOLDER, flexip_name)
        return os.path.getmtime(path) if path else ""

    @classmethod
    def VALIDATE_INPUTS(cls, flexip_name):
        # Replaces ComfyUI's bare "Value not in list" with what to do about it.
        if folder_paths.get_full_path(FOLDER, flexip_name) is None:
            return (f"FlexIPLoader, input 'flexip_name': no file '{flexip_name}' in models/flexip. Fix: put the "
                    "FlexIP .safetensors file in ComfyUI/models/flexip (or a 'flexip:' folder of "
                    "extra_model_paths.yaml) and refresh the page (R).")
        return True

    def load(self, flexip_name):
        # No cache of our own: ComfyUI's output cache (keyed by IS_CHANGED's mtime) keeps the result,
        # and a module held here would survive "Unload models" / POST /free.
        path = folder_paths.get_full_path_or_raise(FOLDER, flexip_name)
        try:
            module = load_flexip(path)
            exponent = slider_exponent(read_flexip_header(path)[1], os.path.basename(path))
        except FlexIPWeightError as e:
            raise FlexIPInputError("FlexIPLoader", "flexip_name", str(e), "choose a FlexIP weight file.") from e
        except ValueError as e:  # the slider map's metadata
            raise FlexIPInputError("FlexIPLoader", "flexip_name", str(e),
                                   "re-export the file with this pack, or choose another FlexIP weight file.") from e
        return (ManagedFlexIP(module, exponent),)
