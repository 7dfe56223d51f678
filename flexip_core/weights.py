"""FlexIP weight files: one safetensors file, its config in the metadata.

The metadata holds everything needed to rebuild the module (the config as JSON, the injection
formulation, a schema version), so a file keeps loading as the pack evolves. A file is untrusted
input: its config is checked field by field before anything is built, and nothing is ever
unpickled (a pickled file is named from its opcodes, see pickle_sniff).
"""
import json
import os
from collections import Counter

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import CONFIGS, INJECTION_DECOUPLED_BLEND, FlexIPConfig
from .model import FlexIP
from .pickle_sniff import read_pickle

SCHEMA_VERSION = 1
FORMAT = "flexip"
INJECTIONS = (INJECTION_DECOUPLED_BLEND,)
RESERVED_KEYS = ("format", "schema_version", "base_model", "config", "injection")
# Config fields fixed by the base model's UNet and text encoder (the rest is free to train).
BASE_MODEL_FIELDS = ("text_dim", "context_dim", "layers")
MAX_LISTED = 8
# The stored config JSON: sd15's takes 1.3 KB; 128 layers, the most a config may have, about 6 KB.
MAX_CONFIG_CHARS = 65_536
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names
# Cross-attention context width of each base model IP-Adapter exists for.
IP_ADAPTER_BASES = {768: "SD1.5", 2048: "SDXL"}


class FlexIPWeightError(ValueError):
    """A file that cannot be used as FlexIP weights; the message says what to do."""

    def __init__(self, path, problem):
        self.path = path
        super().__init__(f"{os.path.basename(path)}: {problem}\n(file: {os.path.abspath(path)})")


def save_flexip(model: FlexIP, path, extra_metadata: dict[str, str] | None = None):
    """Write model's tensors and config to path; extra_metadata (e.g. training info) is kept too."""
    extra = dict(extra_metadata or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra_metadata may not set the reserved keys {clash}")
    config = model.config
    metadata = {**extra, "format": FORMAT, "schema_version": str(SCHEMA_VERSION),
                "base_model": config.name, "config": json.dumps(config.to_dict()),
                "injection": config.injection}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Write then rename: an interrupted save never leaves a half file under the real name.
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def read_flexip_header(path):
    """(config, metadata) of a FlexIP file, validated, without reading its tensors."""
    config, metadata, _ = _read_header(path)
    return config, metadata


def load_flexip(path, device="cpu") -> FlexIP:
    """The FlexIP module a file stores, loaded strictly and bit-exactly, in eval mode."""
    config, _, (shapes, dtypes) = _read_header(path)
    # Built on the meta device: no time spent on random init the file overwrites anyway.
    with torch.device("meta"):
        model = FlexIP(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_shapes(path, config, shapes, expected)
    _check_dtypes(path, dtypes)
    tensors = load_file(path, device=str(device))
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FlexIPWeightError(path, f"tensors contain NaN or Inf values: {_listing(bad, ', ')}. "
                                "Training diverged or the file is damaged; use an earlier "
                                "checkpoint or download the file again.")
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def _read_header(path):
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            slices = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
    except SafetensorError:
        _refuse_pickle(path)
        raise FlexIPWeightError(path, "the file looks truncated or is not a safetensors file. "
                                "If it is a FlexIP download, download/copy it again.") from None

    if metadata.get("format") != FORMAT:
        _refuse_foreign(path, shapes)
    schema = _parse(path, lambda: int(metadata["schema_version"]))
    # Checked before the rest: a newer schema may store its config differently.
    if schema > SCHEMA_VERSION:
        raise FlexIPWeightError(path, f"this file needs a newer comfyui-flexip (file schema {schema}, "
                                f"this version reads up to {SCHEMA_VERSION}); update the pack.")
    config = _read_config(path, metadata)
    base_model = _parse(path, lambda: metadata["base_model"])
    if base_model not in CONFIGS:
        raise FlexIPWeightError(path, f"it is made for base model '{base_model}', which this version "
                                f"of comfyui-flexip does not support (supported: {', '.join(CONFIGS)}). "
                                "Use a FlexIP file for a supported base model, or update the pack.")
    if config.injection not in INJECTIONS:
        raise FlexIPWeightError(path, f"it uses the injection formulation '{config.injection}', which "
                                f"this version does not know (known: {', '.join(INJECTIONS)}); "
                                "update the pack.")
    _check_base_model(path, config, base_model)
    return config, metadata, (shapes, dtypes)


def _read_config(path, metadata):
    """The stored config, refused with the first problem found before anything is built."""
    text = _parse(path, lambda: metadata["config"])
    try:
        if len(text) > MAX_CONFIG_CHARS:
            raise ValueError(f"config JSON is {len(text):,} characters long; a FlexIP config is at most "
                             f"{MAX_CONFIG_CHARS:,}")
        try:
            raw = json.loads(text, parse_constant=_not_a_number, object_pairs_hook=_unique_keys)
        except RecursionError:
            raise ValueError("config JSON is nested too deeply") from None
        return FlexIPConfig.from_dict(raw)
    except ValueError as e:  # json's errors are ValueErrors too
        raise FlexIPWeightError(path, f"its FlexIP metadata is damaged or beyond this version's limits: {e}. "
                                "Download the file again, or re-export it with this pack.") from None


def _not_a_number(constant):
    raise ValueError(f"config JSON holds {constant}, which is not a number")


def _unique_keys(pairs):
    d = {}
    for key, value in pairs:
        if key in d:
            raise ValueError(f"config JSON repeats the key {key[:40]!r}")
        d[key] = value
    return d


def _parse(path, read):
    try:
        return read()
    except (KeyError, ValueError) as e:
        raise FlexIPWeightError(path, f"its FlexIP metadata is damaged ({type(e).__name__}: {e}). "
                                "Download the file again or re-export it.") from None


def _check_base_model(path, config, base_model):
    reference = CONFIGS[base_model]
    wrong = [f for f in BASE_MODEL_FIELDS if getattr(config, f) != getattr(reference, f)]
    if not wrong:
        return
    details = "; ".join(
        "its cross-attention layers differ" if f == "layers"
        else f"{f} is {getattr(config, f)}, {base_model} has {getattr(reference, f)}" for f in wrong)
    hint = " (2048 is SDXL's context width)" if config.context_dim == 2048 else ""
    raise FlexIPWeightError(path, f"it claims base model {base_model} but its config does not fit "
                            f"that model: {details}{hint}. The file is for another base model or is "
                            f"damaged; use a FlexIP file made for {base_model}.")


def _check_shapes(path, config, shapes, expected):
    problems = [f"{k}{_unet_layer(k)}: missing from the file" for k in expected if k not in shapes]
    problems += [f"{k}{_unet_layer(k)}: not part of a FlexIP {config.name} model"
                 for k in shapes if k not in expected]
    problems += [f"{k}{_unet_layer(k)}: file has shape {shapes[k]}, config {config.name} expects {shape}"
                 for k, shape in expected.items() if k in shapes and shapes[k] != shape]
    if problems:
        raise FlexIPWeightError(path, f"its tensors do not match its own config ({config.name}):\n  "
                                + _listing(problems, "\n  ")
                                + "\nThe file is damaged or was written by another tool; download "
                                "or export it again.")


def _check_dtypes(path, dtypes):
    """Every tensor floating point and of one type: an integer tensor cannot be a parameter, and
    mixed types fail inside the first matrix product."""
    wrong = [f"{k} ({dtype})" for k, dtype in dtypes.items() if dtype not in FLOAT_DTYPES]
    by_type = Counter(dtypes.values())
    if wrong:
        problem = f"it has tensors that are not floating point: {_listing(wrong, ', ')}"
    elif len(by_type) > 1:
        problem = "its tensors mix float types: " + ", ".join(
            f"{dtype} ({n}: {_listing([k for k, d in dtypes.items() if d == dtype], ', ')})"
            for dtype, n in by_type.most_common())
    else:
        return
    raise FlexIPWeightError(path, f"{problem}. FlexIP tensors are floating point (F16, BF16, F32 or F64) "
                            "and all of one type; the file is damaged or was written by another tool. "
                            "Export it again with this pack.")


def _unet_layer(key):
    """' (UNet output block 3, transformer 0)' for a per-layer projection key, else ''."""
    parts = key.split(".")
    if parts[:2] != ["projections", "layers"] or len(parts) < 3:
        return ""
    block, index, transformer = (parts[2].split("_") + ["?", "?"])[:3]
    return f" (UNet {block} block {index}, transformer {transformer})"


def _listing(items, sep):
    more = f"{sep}... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return sep.join(items[:MAX_LISTED]) + more


def _refuse_pickle(path):
    """Say what a pickled file is, from its opcodes alone (pickle_sniff); return if it is none."""
    summary = read_pickle(path)
    if summary is None:
        return
    _refuse_ip_adapter(path, summary.tensors)
    if summary.imports:
        raise FlexIPWeightError(path, "it is a pickled file that cannot be read safely: unpickling it would "
                                f"import and call {_listing(list(summary.imports), ', ')}, which is how a "
                                "pickle runs code. FlexIP never unpickles; FlexIP weights are .safetensors "
                                "files only.")
    raise FlexIPWeightError(path, "it is a pickled PyTorch file (.bin/.pt/.ckpt), not a FlexIP weight "
                            "file. FlexIP weights are .safetensors files only; use a FlexIP file "
                            "trained with this project.")


def _refuse_ip_adapter(path, shapes):
    if not any(k.startswith("image_proj.") for k in shapes) or \
            not any(k.startswith("ip_adapter.") for k in shapes):
        return
    # to_k_ip maps the image tokens into the UNet's context width, which names the base model.
    widths = {s[1] for k, s in shapes.items() if k.endswith("to_k_ip.weight") and len(s) == 2}
    bases = sorted(IP_ADAPTER_BASES.get(w, f"context width {w}") for w in widths)
    kind = f" for {', '.join(bases)}" if bases else ""
    raise FlexIPWeightError(path, f"this is an IP-Adapter file{kind}, not a FlexIP file. Load it with "
                            "ComfyUI_IPAdapter_plus (IPAdapter Model Loader); FlexIP needs a FlexIP "
                            "file trained with this project.")


def _refuse_foreign(path, shapes):
    _refuse_ip_adapter(path, shapes)
    keys = list(shapes)
    raise FlexIPWeightError(path, "not a FlexIP weight file (its metadata has no format=flexip). "
                            f"It holds {len(keys)} tensors, e.g. {', '.join(keys[:5]) or 'none'}. "
                            "Use a FlexIP weight file trained with this project.")
