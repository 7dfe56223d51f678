"""FlexIP weight files: one safetensors file, its config in the metadata.

The metadata holds everything needed to rebuild the module (the config as JSON, the injection
formulation, a schema version), so a file keeps loading as the pack evolves. Loading never
unpickles anything: a pickled file is at most opened with torch.load(weights_only=True) to tell
the user what it is.
"""
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import CONFIGS, INJECTION_DECOUPLED_BLEND, FlexIPConfig
from .model import FlexIP

SCHEMA_VERSION = 1
FORMAT = "flexip"
INJECTIONS = (INJECTION_DECOUPLED_BLEND,)
RESERVED_KEYS = ("format", "schema_version", "base_model", "config", "injection")
# Config fields fixed by the base model's UNet and text encoder (the rest is free to train).
BASE_MODEL_FIELDS = ("text_dim", "context_dim", "layers")
MAX_LISTED = 8
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
    config, _, shapes = _read_header(path)
    # Built on the meta device: no time spent on random init the file overwrites anyway.
    with torch.device("meta"):
        model = FlexIP(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_shapes(path, config, shapes, expected)
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
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError:
        if _looks_pickled(path):
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
    config = _parse(path, lambda: FlexIPConfig.from_dict(json.loads(metadata["config"])))
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
    return config, metadata, shapes


def _parse(path, read):
    try:
        return read()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
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


def _looks_pickled(path):
    with open(path, "rb") as f:
        head = f.read(9)
    # torch.save writes a zip; older files are a bare pickle (0x80 = PROTO). A safetensors header
    # length may also start with 0x80, but then byte 8 opens its JSON header.
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[8:9] != b"{")


def _refuse_pickle(path):
    try:
        # weights_only: never runs code from the file; used only to name what the file is.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise FlexIPWeightError(path, "it is a pickled PyTorch file that cannot be read safely. "
                                "FlexIP weights are .safetensors files only.") from None
    shapes = dict(_flatten(obj)) if isinstance(obj, dict) else {}
    _refuse_ip_adapter(path, shapes)
    raise FlexIPWeightError(path, "it is a pickled PyTorch file (.bin/.pt/.ckpt), not a FlexIP weight "
                            "file. FlexIP weights are .safetensors files only; use a FlexIP file "
                            "trained with this project.")


def _flatten(d, prefix=""):
    """Nested dicts of tensors -> ('a.b.c', shape) pairs, as a safetensors file would name them."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        elif isinstance(v, torch.Tensor):
            yield f"{prefix}{k}", tuple(v.shape)


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
