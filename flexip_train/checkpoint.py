"""Training checkpoints: written atomically, pruned to the newest few, resumed exactly.

A checkpoint is the folder <run_dir>/checkpoints/step-<8-digit step>/ holding
  model.safetensors      the trained module's state_dict (our modules only, never the frozen UNet)
  optimizer.safetensors  every tensor of the training state: the optimizer's (exp_avg, step, ...)
                         and any in the scheduler state, data position or RNG states
  state.json             the rest of that state: optimizer param_groups, scheduler, data position,
                         per-rank RNG states; a tensor appears as {"__tensor__": its key above}
  meta.json              format name and version, step, each file's byte size, config, extra
JSON and safetensors only: nothing is pickled, and tuples, int keys and tensor dtypes come back
exactly. The folder is written under a hidden name, synced, then renamed, so a folder with its
final name is complete; a writer killed midway leaves a hidden leftover that readers ignore and
the next save removes.
"""
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "flexip-train-checkpoint"
FORMAT_VERSION = 1
MODEL, OPTIMIZER, STATE, META = "model.safetensors", "optimizer.safetensors", "state.json", "meta.json"
STEP_FOLDER = re.compile(r"step-(\d{8,})")
LEFTOVER_PREFIX = ".step-"
# Tags for what JSON cannot say by itself: a tensor (stored in safetensors), a tuple, int keys.
TENSOR, TUPLE, INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"
MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the fix."""

    def __init__(self, path, problem):
        self.path = Path(path)
        super().__init__(f"checkpoint {path}: {problem}")


class DamagedCheckpointError(CheckpointError):
    """Files missing, truncated or unreadable: an older checkpoint may still be good."""


@dataclass
class ResumeState:
    step: int
    data_state: dict
    rng_states: list
    config: dict
    extra: dict


def save_checkpoint(run_dir, step, model, optimizer, scheduler, data_state, rng_states, config,
                    extra=None, keep_last=3) -> Path:
    """Write the checkpoint of `step` and keep only the newest keep_last (None: keep all).

    model: the unwrapped trained module (or its state_dict); under DDP call this on the main
    process only. rng_states: one capture_rng_state() per rank. data_state, config and extra:
    JSON types, tuples and (except config/extra) tensors.
    """
    if type(step) is not int or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (or None to keep all), got {keep_last}")
    if not isinstance(rng_states, (list, tuple)):
        raise TypeError("rng_states must be a list with one capture_rng_state() per rank, "
                        f"got a {type(rng_states).__name__}")
    final = Path(run_dir) / "checkpoints" / f"step-{step:08d}"
    folder = final.parent
    # Everything is encoded before anything is written: a bad value leaves no leftover.
    tensors = {}
    state = {"optimizer": _section(optimizer, "optimizer", tensors),
             "scheduler": _section(scheduler, "scheduler", tensors),
             "data_state": _encode(data_state, "data_state", tensors),
             "rng_states": _encode(list(rng_states), "rng_states", tensors)}
    model_state = model.state_dict() if isinstance(model, nn.Module) else model
    model_tensors = {k: _cpu_copy(v) for k, v in model_state.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
            "config": _encode(config, "config", None), "extra": _encode(extra or {}, "extra", None),
            "torch_version": torch.__version__}

    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    later = [s for s, _ in _complete(folder) if s > step]
    if later:
        warnings.warn(f"{folder} already holds checkpoints of later steps ({later}): "
                      f"latest_checkpoint() will resume from step {later[-1]}, not {step}.", stacklevel=2)
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    _write_tensors(tmp / MODEL, model_tensors)
    _write_tensors(tmp / OPTIMIZER, tensors)
    _write_json(tmp / STATE, state)
    meta["files"] = {name: (tmp / name).stat().st_size for name in (MODEL, OPTIMIZER, STATE)}
    _write_json(tmp / META, meta, indent=1)
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again: move the old one out of sight, then swap
        old = folder / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(folder)
    _prune(folder, keep_last, final)
    return final


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint that passes its checks; a damaged one is skipped with a warning."""
    folder = Path(run_dir) / "checkpoints"
    found = _complete(folder) if folder.is_dir() else []
    for _, path in reversed(found):
        try:
            _verify(path)
            return path
        except DamagedCheckpointError as e:
            warnings.warn(f"{e}\nFalling back to the previous checkpoint.", stacklevel=2)
    if found:
        # Starting over would silently overwrite the run's history; let a person decide.
        raise CheckpointError(folder, "every checkpoint in it is damaged (see the warnings); move the "
                              "folder away to start the run afresh.")
    return None


def load_checkpoint(path, model, optimizer=None, scheduler=None) -> ResumeState:
    """Load model (strictly), optimizer and scheduler in place from a checkpoint folder.

    Restore each rank's generators with restore_rng_state(resume.rng_states[rank]).
    """
    path = Path(path)
    meta = _verify(path)
    model_tensors = _read_tensors(path / MODEL)
    _check_model(path / MODEL, model.state_dict(), model_tensors)
    state_tensors = _read_tensors(path / OPTIMIZER)
    try:
        state = _decode(json.loads((path / STATE).read_text(encoding="utf-8")), state_tensors)
        config, extra = _decode(meta["config"], {}), _decode(meta["extra"], {})
        sections = {"optimizer": (optimizer, state["optimizer"]), "scheduler": (scheduler, state["scheduler"])}
        data_state, rng_states = state["data_state"], state["rng_states"]
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(path, f"{STATE} is damaged ({type(e).__name__}: {e}); resume from "
                                     "an earlier checkpoint.") from None
    for name, (target, saved) in sections.items():
        if target is None:
            continue
        if saved is None:
            raise CheckpointError(path, f"it was saved without a {name}; resume without one or from another run.")
        if saved["class"] != type(target).__qualname__:
            raise CheckpointError(path, f"its {name} state is from {saved['class']}, the given {name} is a "
                                  f"{type(target).__qualname__}; build the {name} the saving run used.")
    model.load_state_dict(model_tensors, strict=True)
    for name, (target, saved) in sections.items():
        if target is not None:
            try:
                target.load_state_dict(saved["state_dict"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(path, f"its {name} state does not fit the given {name} ({e}); build "
                                      f"it over the same parameter groups as the saving run.") from None
    return ResumeState(meta["step"], data_state, rng_states, config, extra)


# --- Reading and checking ---

def _verify(path):
    """meta.json (format and version first), every file's size and the safetensors headers."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DamagedCheckpointError(path, f"{META} is missing or unreadable ({type(e).__name__}: {e}).") from None
    if not isinstance(meta, dict):
        raise DamagedCheckpointError(path, f"{META} holds no JSON object.")
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, f"{META} does not describe a FlexIP training checkpoint (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r}); point the run at its own folder.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise DamagedCheckpointError(path, f"{META} has no valid format_version ({version!r}).")
    if version > FORMAT_VERSION:
        raise CheckpointError(path, f"it was written by a newer flexip_train (checkpoint format {version}, "
                              f"this version reads up to {FORMAT_VERSION}); update comfyui-flexip to resume it.")
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL, OPTIMIZER, STATE} or \
            not isinstance(meta.get("step"), int):
        raise DamagedCheckpointError(path, f"{META} is damaged: it lacks the step or the file list.")
    for name, size in files.items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            found = "is missing" if actual is None else f"has {actual} bytes, {size} were written"
            raise DamagedCheckpointError(path, f"{name} {found}: the checkpoint is truncated or damaged. "
                                         "Resume from an earlier one (latest_checkpoint() falls back).")
    for name in (MODEL, OPTIMIZER):
        try:
            with safe_open(path / name, "pt") as f:
                f.keys()
        except SafetensorError as e:
            raise DamagedCheckpointError(path, f"{name} is not a readable safetensors file ({e}).") from None
    return meta


def _read_tensors(file):
    try:
        return load_file(file)
    except SafetensorError as e:
        raise DamagedCheckpointError(file, f"not a readable safetensors file ({e}).") from None


def _check_model(file, expected, tensors):
    kinds = {
        "missing from the file": [k for k in expected if k not in tensors],
        "in the file but not in the model": [k for k in tensors if k not in expected],
        "of another shape or dtype": [
            f"{k} (file {tuple(tensors[k].shape)} {tensors[k].dtype}, model {tuple(e.shape)} {e.dtype})"
            for k, e in expected.items()
            if k in tensors and (tensors[k].shape != e.shape or tensors[k].dtype != e.dtype)],
    }
    problems = [f"{len(keys)} key(s) {kind}: {', '.join(keys[:MAX_LISTED])}{', ...' * (len(keys) > MAX_LISTED)}"
                for kind, keys in kinds.items() if keys]
    if problems:
        raise CheckpointError(file, "it does not match the model:\n  " + "\n  ".join(problems)
                              + "\nResume with the model and config the run was saved with (meta.json "
                              "'config'); pass the unwrapped module.")


# --- Writing ---

def _section(obj, name, tensors):
    if obj is None:
        return None
    return {"class": type(obj).__qualname__, "state_dict": _encode(obj.state_dict(), name, tensors)}


def _cpu_copy(tensor):
    # A copy of its own: tensors sharing storage would make safetensors refuse the file.
    return tensor.detach().to("cpu", copy=True).contiguous()


def _encode(value, path, tensors):
    """value as JSON; tensors go into `tensors` under their path (None: tensors are refused)."""
    if isinstance(value, torch.Tensor):
        if tensors is None:
            raise TypeError(f"{path}: a tensor cannot go into {META}; store plain numbers.")
        if path in tensors:
            raise ValueError(f"{path}: two values would be stored under this key; rename the dict keys.")
        tensors[path] = _cpu_copy(value)
        return {TENSOR: path}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
        return {TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(type(k) is int for k in value) and value:
            return {INT_KEYS: {str(k): _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}}
        if not all(type(k) is str and not k.startswith("__") for k in value):
            raise TypeError(f"{path}: dict keys must be all str (not starting with '__') or all int, "
                            f"got {list(value)[:MAX_LISTED]}.")
        return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
    if value is None or type(value) in (bool, int, float, str):
        return value
    raise TypeError(f"{path}: a {type(value).__name__} cannot be stored without pickling; "
                    "use JSON types, tuples or tensors.")


def _decode(value, tensors):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {TENSOR}:
        return tensors[value[TENSOR]]
    if value.keys() == {TUPLE}:
        return tuple(_decode(v, tensors) for v in value[TUPLE])
    if value.keys() == {INT_KEYS}:
        return {int(k): _decode(v, tensors) for k, v in value[INT_KEYS].items()}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _write_tensors(file, tensors):
    save_file(tensors, file)
    _fsync_file(file)
    with safe_open(file, "pt") as f:  # read back: no key may go missing on the way to disk
        stored = set(f.keys())
    if stored != set(tensors):
        raise RuntimeError(f"{file}: {len(set(tensors) - stored)} tensors were not written, e.g. "
                           f"{sorted(set(tensors) - stored)[:MAX_LISTED]}")


def _write_json(file, obj, indent=None):
    with open(file, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(file):
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder):
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a folder to sync it
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- The checkpoints folder ---

def _complete(folder):
    """[(step, path)] of the complete checkpoints, oldest first (only complete ones get the name)."""
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := STEP_FOLDER.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def _remove_leftovers(folder):
    for leftover in folder.glob(f"{LEFTOVER_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _prune(folder, keep_last, just_written):
    if keep_last is None:
        return
    others = [p for _, p in _complete(folder) if p != just_written]
    for path in others[:max(len(others) + 1 - keep_last, 0)]:
        # Out of sight first: a kill during the delete leaves only a leftover, never half a checkpoint.
        doomed = folder / f".{path.name}.deleting-{os.getpid()}"
        os.replace(path, doomed)
        shutil.rmtree(doomed)
