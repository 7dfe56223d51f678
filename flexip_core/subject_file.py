"""Reusable subjects: a subject's reference features (ReferenceFeatures) in one safetensors file.

Encoding a subject needs CLIP ViT-H/14 and DINOv2-L/14 (1.9 GB of weights, seconds per image on
a CPU); a saved subject needs neither. The features depend only on the encoders and on which of
their outputs FlexIP reads (the config's EncoderSpecs), not on the trained adapters, so a subject
works with every FlexIP file of the config it was saved for, and with no other.

Tensors: "clip_embeds" [R, clip.dim] and "dino_patches" [R, M, dino.dim], float32, as the
Reference Encoder gives them. Metadata (all text): format, schema_version, flexip_config (the
config's name), clip and dino (the EncoderSpecs as JSON), references (R) and combine.

A file is untrusted input: its metadata and tensor header are checked against the config before
any tensor is read, and nothing is ever unpickled (a pickled file is named from its opcodes).
"""
import json
import os
import tempfile
from dataclasses import asdict

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .pickle_sniff import read_pickle
from .reference import COMBINES, ReferenceFeatures

FORMAT = "flexip-subject"
SCHEMA_VERSION = 1
TENSORS = ("clip_embeds", "dino_patches")
DTYPE = "F32"  # safetensors' name for float32, what the encoders' outputs are kept in
DINO_PATCH = 14  # DINOv2-L/14: one patch token per 14 x 14 pixels of its input
MAX_REFERENCES = 256
MAX_SPEC_CHARS = 1024  # an EncoderSpec's JSON takes about 150 characters
ENCODERS = {"clip": "CLIP", "dino": "DINOv2"}
RESAVE = "encode the subject again (FlexIP Reference Encoder) and save it with FlexIP Save Subject."


class FlexIPSubjectError(ValueError):
    """A subject that cannot be used with a FlexIP config: .problem says why, .fix what to do."""

    def __init__(self, path, problem, fix):
        self.path, self.problem, self.fix = path, problem, fix
        where = f"{os.path.basename(path)}: " if path else ""
        super().__init__(f"{where}{problem} Fix: {fix}")


def patch_tokens(spec):
    """M, the DINOv2 patch tokens per reference at the spec's resolution."""
    return (spec.resolution // DINO_PATCH) ** 2


def save_subject(reference: ReferenceFeatures, config, path):
    """Write reference, saved for config, to path; never replaces a file (FileExistsError)."""
    tensors = {"clip_embeds": reference.clip_embeds, "dino_patches": reference.dino_patches}
    layout = {name: (tuple(t.shape), DTYPE if t.dtype == torch.float32 else str(t.dtype)) for name, t in tensors.items()}
    problem = _layout_problem(layout, reference.clip_embeds.shape[0], config) or _nonfinite_problem(tensors)
    if problem:
        raise FlexIPSubjectError(None, f"the reference does not fit FlexIP config '{config.name}': {problem}.",
                                 "connect the FlexIP file the Reference Encoder used.")
    metadata = {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), "flexip_config": config.name,
                "clip": json.dumps(asdict(config.clip)), "dino": json.dumps(asdict(config.dino)),
                "references": str(reference.clip_embeds.shape[0]), "combine": reference.combine}
    # Claim the name first ("x" fails if it exists), then write beside it and rename over the
    # claim: an existing subject is never replaced, and an interrupted save leaves no half file.
    # The temporary name is short, so a name that fits the file system's limit still saves.
    open(path, "xb").close()
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
        os.close(handle)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, path):
            if leftover and os.path.exists(leftover):
                os.remove(leftover)
        raise


def load_subject(path, config) -> ReferenceFeatures:
    """The subject a file stores, checked against config first, bit-exactly as it was saved (CPU)."""
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            slices = {k: f.get_slice(k) for k in f.keys()}
            layout = {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in slices.items()}
            references, combine = _check_metadata(path, metadata, layout, config)
            problem = _layout_problem(layout, references, config)
            if problem:
                raise FlexIPSubjectError(path, f"its tensors do not fit FlexIP config '{config.name}': {problem}; "
                                         "the file is damaged or was written by another tool.", RESAVE)
            # Copied out of the file's buffer, where the data is only 8-byte aligned: CPU kernels take
            # other code paths (other rounding) on such memory, and P and S would then differ from the
            # encoder's by ~1e-6 instead of being bit-identical.
            tensors = {k: f.get_tensor(k).clone() for k in TENSORS}
    except SafetensorError:
        _refuse_pickle(path)
        raise FlexIPSubjectError(path, "the file looks truncated or is not a safetensors file.",
                                 "copy the file again, or " + RESAVE) from None
    problem = _nonfinite_problem(tensors)
    if problem:
        raise FlexIPSubjectError(path, f"{problem}; the file is damaged.", RESAVE)
    return ReferenceFeatures(tensors["clip_embeds"], tensors["dino_patches"], combine)


def _check_metadata(path, metadata, layout, config):
    """(references, combine) from a file's metadata, refused at the first problem."""
    if metadata.get("format") != FORMAT:
        if metadata.get("format") == "flexip":
            raise FlexIPSubjectError(path, "this is a FlexIP weight file, not a saved subject.",
                                     "put it in models/flexip and load it with FlexIP Loader; here choose a "
                                     "file saved by FlexIP Save Subject.")
        raise FlexIPSubjectError(path, f"not a FlexIP subject (its metadata has no format={FORMAT}); it holds "
                                 f"{len(layout)} tensors, e.g. {', '.join(list(layout)[:5]) or 'none'}.",
                                 "choose a file saved by FlexIP Save Subject.")
    schema = _parse(path, "schema_version", int, metadata)
    # Checked before the rest: a newer schema may store everything else differently.
    if schema > SCHEMA_VERSION:
        raise FlexIPSubjectError(path, f"it was saved by a newer comfyui-flexip (subject schema {schema}; this "
                                 f"version reads up to {SCHEMA_VERSION}).", "update the pack, or " + RESAVE)
    if schema < 1:
        raise FlexIPSubjectError(path, f"its metadata is damaged (schema_version {schema}; versions start at 1).",
                                 RESAVE)
    name = _parse(path, "flexip_config", str, metadata)
    if name != config.name:
        raise FlexIPSubjectError(path, f"it was saved for FlexIP config {_show(name)}; the connected FlexIP file "
                                 f"has config '{config.name}'.",
                                 f"choose a subject saved with a FlexIP '{config.name}' file, connect a FlexIP file "
                                 f"of config {_show(name)}, or encode the subject again with this FlexIP file.")
    for which in ENCODERS:
        spec = _parse(path, which, _spec_json, metadata)
        expected = json.loads(json.dumps(asdict(getattr(config, which))))  # tuples as JSON lists
        if spec != expected:
            raise FlexIPSubjectError(path, f"its {ENCODERS[which]} features are {_describe(spec)}; FlexIP config "
                                     f"'{config.name}' reads {_describe(expected)}.", RESAVE)
    references = _parse(path, "references", int, metadata)
    if not 1 <= references <= MAX_REFERENCES:
        raise FlexIPSubjectError(path, f"its metadata claims {references} references; a subject has 1 to "
                                 f"{MAX_REFERENCES}.", RESAVE)
    combine = _parse(path, "combine", str, metadata)
    if combine not in COMBINES:
        raise FlexIPSubjectError(path, f"its combine is {_show(combine)}, not one of {', '.join(COMBINES)}.", RESAVE)
    return references, combine


def _parse(path, key, read, metadata):
    try:
        return read(metadata[key])
    except (KeyError, ValueError) as e:  # json's errors are ValueErrors too
        raise FlexIPSubjectError(path, f"its metadata is damaged ({key}: {type(e).__name__}: {_show(str(e))}).",
                                 RESAVE) from None


def _spec_json(text):
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"{len(text):,} characters, an encoder spec takes at most {MAX_SPEC_CHARS:,}")
    spec = json.loads(text, parse_constant=_not_a_number)
    if not isinstance(spec, dict):
        raise ValueError(f"a JSON object is needed, not {type(spec).__name__}")
    return spec


def _not_a_number(constant):
    raise ValueError(f"holds {constant}, which is not a number")


def _describe(spec):
    return (f"{_show(spec.get('feature'))} ({_show(spec.get('dim'))}-d) at {_show(spec.get('resolution'))} px, "
            f"mean {_show(spec.get('mean'))}, std {_show(spec.get('std'))}")


def _layout_problem(layout, references, config):
    """What is wrong with {name: (shape, safetensors dtype)} for R references of config; None if nothing."""
    expected = {"clip_embeds": (references, config.clip.dim),
                "dino_patches": (references, patch_tokens(config.dino), config.dino.dim)}
    if set(layout) != set(expected):
        return f"it holds the tensors {_show(sorted(layout))}, a subject holds exactly {', '.join(TENSORS)}"
    for name, shape in expected.items():
        if layout[name][0] != shape:
            return f"{name} has shape {_show(layout[name][0])}, {references} references need {shape}"
        if layout[name][1] != DTYPE:
            return f"{name} is {_show(layout[name][1])}, a subject's features are float32 ({DTYPE})"
    return None


def _nonfinite_problem(tensors):
    bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    return f"{', '.join(bad)} hold NaN or Inf values" if bad else None


def _refuse_pickle(path):
    """Say what a pickled file is, from its opcodes alone; return if it is no pickle."""
    summary = read_pickle(path)
    if summary is None:
        return
    runs = (f" Unpickling it would import and call {', '.join(summary.imports[:8])}, which is how a pickle "
            "runs code." if summary.imports else "")
    raise FlexIPSubjectError(path, f"it is a pickled file (.pt/.bin/.ckpt), not a FlexIP subject; FlexIP never "
                             f"unpickles.{runs}", "remove it from models/flexip_subjects, then " + RESAVE)


def _show(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
