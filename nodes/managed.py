"""The FLEXIP object: a FlexIP module under ComfyUI's model management, as CLIP_VISION is.

ComfyUI's ModelPatcher for the module lets model management put it on the compute device when a
node needs it, offload it when other models need the room (--lowvram, small GPUs), and unload it
on "Unload models" / POST /free. Nothing but ComfyUI's node output cache holds this object, so
after /free with free_memory the module is released.
"""
import comfy.model_management
import comfy.model_patcher


class ManagedFlexIP:
    def __init__(self, module, slider_exponent=1.0):
        """module: a FlexIP (flexip_core.FlexIP) in eval mode, on the offload device. slider_exponent:
        the slider map its weight file stores (flexip_core.slider; 1: the paper's, gamma itself)."""
        self.module = module
        self.config = module.config
        self.slider_exponent = slider_exponent
        self.patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device())

    # The parts the nodes run; call load() first.
    @property
    def preservation(self):
        return self.module.preservation

    @property
    def personalization(self):
        return self.module.personalization

    @property
    def projections(self):
        return self.module.projections

    def load(self):
        """Put the module on its compute device (other models are offloaded if it needs the room);
        returns the device its weights are on, where its layers must run."""
        # Loaded whole: ComfyUI's partial (lowvram) loading only streams comfy.ops layers and would
        # leave FlexIP's plain torch layers on the offload device. Under --novram model management loads
        # every model partially even so, and the module stays on the offload device: it runs there.
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return next(self.module.parameters()).device
