"""The slider map: the user's gamma -> the weight that blends the two branches.

The paper blends the branches with gamma itself (out = base + w (gamma P + (1 - gamma) S)). A trained
model's picture need not move evenly with that weight: in the miniature most of the identity's rise
lies in the first fifth of the range (benchmarks/README.md, issue 15). A weight file may therefore
carry a power map, blend weight = gamma ** exponent, fitted once after training on training subjects
(benchmarks/nano/calibrate.py), so that equal moves of the slider give comparable changes of the
picture. The ends stay where they are (0 and 1 map to themselves). A file without the key uses the
paper's map, exponent 1. Training never goes through this map: its gate gives blend weights.
"""
import math

from .weights import RESERVED_KEYS, load_flexip, read_flexip_header, save_flexip

METADATA_KEY = "slider_exponent"
EXPONENT_RANGE = (0.25, 4.0)


def slider_exponent(metadata, where="weight file"):
    """The exponent a weight file's metadata stores (1 when it stores none), checked: a file is
    untrusted. ValueError names the key and the range."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        return 1.0
    low, high = EXPONENT_RANGE
    try:
        exponent = float(text)
    except (TypeError, ValueError):
        exponent = math.nan
    if not low <= exponent <= high:  # NaN fails too
        raise ValueError(f"{where}: metadata {METADATA_KEY} is {str(text)[:40]!r}; it must be a number from {low} to {high}")
    return exponent


def blend_weight(gamma, exponent):
    """gamma ** exponent, for a number, or a tensor or array of per-sample gammas, in [0, 1]."""
    return gamma if exponent == 1.0 else gamma ** exponent


def save_with_slider_exponent(source, target, exponent):
    """Write the FlexIP weight file `source` to `target` with the slider map `exponent` in its metadata
    (the rest of the metadata kept, the tensors loaded and checked as the loader does)."""
    low, high = EXPONENT_RANGE
    if not low <= exponent <= high:
        raise ValueError(f"slider exponent {exponent!r} is not a number from {low} to {high}")
    _, metadata = read_flexip_header(source)
    extra = {key: value for key, value in metadata.items() if key not in RESERVED_KEYS}
    save_flexip(load_flexip(source), target, {**extra, METADATA_KEY: repr(float(exponent))})


class MappedSchedule:
    """A gamma schedule (schedule(sigma, block) -> gamma) whose gammas go through the slider map."""

    def __init__(self, schedule, exponent):
        self.schedule, self.exponent = schedule, exponent

    def __call__(self, sigma, block):
        return blend_weight(self.schedule(sigma, block), self.exponent)
