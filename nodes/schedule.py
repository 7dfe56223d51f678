"""Gamma sources for GatedApply other than its slider: a schedule over the sampling and the
UNet's blocks (FlexIPGammaSchedule), and one gamma per image of a latent batch (FlexIPGammaSweep)."""
import math

from ..flexip_core.schedule import CURVES, GammaSchedule
from .errors import FlexIPInputError

SCHEDULE_NODE = "FlexIPGammaSchedule"
SWEEP_NODE = "FlexIPGammaSweep"


def fraction_input(default, tooltip):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tooltip})


def out_of_range(node, values):
    """A FlexIPInputError for the first value that is not a number in [0, 1], else None.
    ComfyUI's own range check lets NaN through (every comparison with NaN is false)."""
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            return FlexIPInputError(node, name, f"{value!r} is not a number from 0 to 1.", f"set {name} between 0 and 1.")
    return None


class FlexIPGammaSchedule:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("A gamma that changes over the sampling and per UNet block, for GatedApply's schedule input: "
                   "gamma = block multiplier x (start + (end - start) x curve(t)), t the fraction of the sampling "
                   "(0 at the first step, 1 at the last). Example: start 1, end 0.3 keeps the subject's layout and "
                   "identity in the early steps and lets the details follow the prompt late.")
    RETURN_TYPES = ("FLEXIP_GAMMA_SCHEDULE",)
    RETURN_NAMES = ("schedule",)
    OUTPUT_TOOLTIPS = ("The gamma schedule; connect it to GatedApply's schedule input (it replaces the gamma slider).",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "start": fraction_input(1.0, "gamma at the first step (1 = keep the subject exactly, 0 = follow the "
                                         "prompt freely)."),
            "end": fraction_input(0.3, "gamma at the last step."),
            "curve": (list(CURVES), {"default": "linear",
                                     "tooltip": "How gamma goes from start to end over the sampling: linear, or "
                                                "cosine (stays near start early and near end late)."}),
            "input_blocks": fraction_input(1.0, "Multiplier of gamma in the UNet's input (down) blocks: 1 = the "
                                                "schedule's gamma, 0 = gamma 0 there (personalize)."),
            "middle_block": fraction_input(1.0, "Multiplier of gamma in the UNet's middle block."),
            "output_blocks": fraction_input(1.0, "Multiplier of gamma in the UNet's output (up) blocks. With start "
                                                 "= end = 1 the three multipliers are the blocks' gammas."),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, start=None, end=None, input_blocks=None, middle_block=None, output_blocks=None):
        # None: the input is linked, its value is known only when the node runs (make checks it then).
        values = {"start": start, "end": end, "input_blocks": input_blocks, "middle_block": middle_block,
                  "output_blocks": output_blocks}
        problem = out_of_range(SCHEDULE_NODE, {k: v for k, v in values.items() if v is not None})
        return str(problem) if problem else True

    def make(self, start, end, curve, input_blocks, middle_block, output_blocks):
        problem = out_of_range(SCHEDULE_NODE, {"start": start, "end": end, "input_blocks": input_blocks,
                                               "middle_block": middle_block, "output_blocks": output_blocks})
        if problem:
            raise problem
        if curve not in CURVES:
            raise FlexIPInputError(SCHEDULE_NODE, "curve", f"{curve!r} is not a curve.", f"choose one of {list(CURVES)}.")
        return (GammaSchedule(start, end, curve, (input_blocks, middle_block, output_blocks)),)


def parse_gammas(text):
    """'0, 0.25, 1' -> (0.0, 0.25, 1.0); FlexIPInputError naming the entry that is not a number in [0, 1]."""
    fix = "write one gamma from 0 to 1 per image of the latent batch, separated by commas, e.g. 0, 0.25, 0.5."
    if not isinstance(text, str) or not text.strip():
        raise FlexIPInputError(SWEEP_NODE, "gammas", "no gammas given.", fix)
    gammas = []
    for i, entry in enumerate(text.split(","), 1):
        try:
            value = float(entry)
        except ValueError:
            raise FlexIPInputError(SWEEP_NODE, "gammas", f"entry {i} ({entry.strip()!r}) is not a number.", fix) from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise FlexIPInputError(SWEEP_NODE, "gammas", f"entry {i} ({entry.strip()}) is not from 0 to 1.", fix)
        gammas.append(value)
    return tuple(gammas)


def sweep_batch_error(gammas, rows):
    """GatedAttention's batch_error for a sweep: raised while sampling, when the batch is known."""
    return FlexIPInputError(SWEEP_NODE, "gammas", f"{gammas} gammas for a latent batch of {rows} images.",
                            f"give one gamma per image ({rows}), or set the latent's batch_size to {gammas}.")


class FlexIPGammaSweep:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("One gamma per image of the latent batch, for GatedApply's sweep input: with a batch of N images "
                   "and N gammas, one sampler run gives the whole gamma sweep (image i uses gamma i).")
    RETURN_TYPES = ("FLEXIP_GAMMA_SWEEP",)
    RETURN_NAMES = ("sweep",)
    OUTPUT_TOOLTIPS = ("The gammas, one per image of the batch; connect it to GatedApply's sweep input (it replaces "
                       "the gamma slider).",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "gammas": ("STRING", {"default": "0, 0.25, 0.5, 0.75, 1", "multiline": False,
                                  "tooltip": "Comma-separated gammas from 0 to 1, one per image of the latent batch, "
                                             "in batch order; their number must equal the batch_size."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, gammas=None):
        if gammas is None:  # linked: checked when the node runs
            return True
        try:
            parse_gammas(gammas)
        except FlexIPInputError as e:
            return str(e)
        return True

    def make(self, gammas):
        return (parse_gammas(gammas),)
