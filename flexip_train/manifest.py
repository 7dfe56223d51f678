"""The training manifest: a JSONL file, one sample per line, and the files a sample names.

A line (fields other than these are refused, so a misspelt one is caught):

    {"modality": "image", "references": ["cats/tom.jpg"], "target": "cats/tom.jpg",
     "caption": "a grey cat on a sofa", "mask": "cats/tom.mask.png", "loss_mask": "cats/tom.loss.mask.png"}
    {"modality": "video", "references": ["clips/walk.mp4"], "target": "clips/walk.mp4",
     "caption": "a man walking a dog", "frames": [3, 17]}
    {"modality": "multiview", "references": ["mugs/red/0.png"], "target": "mugs/red/3.png",
     "caption": "a red mug"}

- modality: "image" (invariant: the target is the reference picture itself), "video" (two frames
  of one video or frame folder) or "multiview" (two views of one object); video and multiview are
  the paper's "variant" data.
- references: one path or a list; for video the one video file or frame folder. target: for video
  the same path as the reference; may be left out for image and video (then it is the reference).
- caption: the text of the target, not empty. mask: optional, the reference subject's mask (white =
  subject), the reference's size; only with one reference, and for video only with fixed frames.
  The encoders see the reference with the rest greyed out.
- loss_mask: optional, the target's subject mask (white = subject), the target's size; for video
  only with fixed frames (it is the target frame's). With the run option loss.subject_weight, the
  loss weighs the subject's pixels that many times the rest (flexip_core.training.subject_loss_weight).
- frames: video only, [reference frame, target frame] counted from 0 in decoding order (for a frame
  folder: in the order of the numbers in the file names); left out, the dataset draws a random pair.
- gamma: optional, a number in [0, 1]: the gate value this sample trains at, instead of the gate's
  (alpha, 1 - beta, or a sampled one). 0 trains the personalization branch alone: for an edit pair
  whose caption contradicts the reference, so that the preservation branch never learns to drop
  what the reference shows.

Paths are relative to the manifest's folder (absolute ones are allowed); read_manifest resolves
them. Reading is cheap (no decoding): a bad line or a missing file becomes a Problem, never an error;
files that cannot be decoded are found by the builders and, at training time, by the dataset.
"""
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

MODALITIES = ("image", "video", "multiview")
VARIANT_MODALITIES = ("video", "multiview")
FIELDS = ("modality", "references", "target", "caption", "mask", "loss_mask", "frames", "gamma")
# Video frame pairs (our choice; the paper does not say): frames at least MIN_GAP apart so the
# pair shows a change, at most MAX_GAP (about a second at 30 fps) so it shows the same subject.
MIN_GAP = 4
MAX_GAP = 32


@dataclass(frozen=True)
class Sample:
    modality: str
    references: tuple[str, ...]
    target: str
    caption: str
    mask: str | None = None
    frames: tuple[int, int] | None = None
    loss_mask: str | None = None
    gamma: float | None = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if not isinstance(self.references, tuple) or not self.references \
                or not all(isinstance(p, str) and p for p in self.references):
            raise ValueError(f"references must be a non-empty tuple of paths, got {self.references!r}")
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"target must be a path, got {self.target!r}")
        if not isinstance(self.caption, str) or not self.caption.strip():
            raise ValueError("missing caption")
        for name in ("mask", "loss_mask"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a path, got {value!r}")
        if self.mask is not None and len(self.references) != 1:
            raise ValueError(f"a mask goes with one reference, got {len(self.references)}")
        if self.modality == "video":
            if len(self.references) != 1 or self.target != self.references[0]:
                raise ValueError("a video sample takes its two frames from one video: one reference, "
                                 "and the target is the same path")
            if self.mask is not None and self.frames is None:
                raise ValueError("a video sample's mask is of one frame: give the frames too")
            if self.loss_mask is not None and self.frames is None:
                raise ValueError("a video sample's loss_mask is of its target frame: give the frames too")
        if self.gamma is not None and (isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float))
                                       or not 0 <= self.gamma <= 1):
            raise ValueError(f"gamma must be a number from 0 to 1, got {self.gamma!r}")
        if self.frames is not None:
            if self.modality != "video":
                raise ValueError(f"frames are for video samples, not {self.modality}")
            if not isinstance(self.frames, tuple) or len(self.frames) != 2 \
                    or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in self.frames):
                raise ValueError(f"frames must be two frame indices >= 0, got {self.frames!r}")

    @property
    def is_variant(self):
        return self.modality in VARIANT_MODALITIES

    def paths(self):
        """Every file or folder the sample names, once each."""
        masks = tuple(m for m in (self.mask, self.loss_mask) if m)
        return tuple(dict.fromkeys((*self.references, self.target, *masks)))


@dataclass(frozen=True)
class Problem:
    """Why a sample was left out: where (a path, or manifest path:line), a short reason that
    summaries group by, and the details (an exception's message, a count)."""
    path: str
    reason: str
    detail: str = ""

    def __str__(self):
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def summarize(samples, problems, what="samples"):
    """'N samples; M skipped' then one line per reason with its count and every path."""
    lines = [f"{len(samples)} {what}; {len(problems)} skipped" + (":" if problems else "")]
    by_reason = defaultdict(list)
    for problem in problems:
        by_reason[problem.reason].append(problem)
    for reason, group in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0])):
        lines.append(f"  {reason}: {len(group)}")
        lines.extend(f"    {p.path}" + (f" ({p.detail})" if p.detail else "") for p in group)
    return "\n".join(lines)


# --- Reading and writing ------------------------------------------------------------------------

class InvalidSample(ValueError):
    """A manifest line that is not a sample; reason is what summaries group by."""
    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _resolve(value, base):
    if not isinstance(value, str) or not value:
        raise ValueError(f"a path must be a non-empty string, got {value!r}")
    return os.path.normpath(os.path.join(base, value))  # an absolute value stays as it is


def sample_from_record(record, base):
    """One parsed JSON line -> Sample with its paths resolved against base. Raises InvalidSample."""
    try:
        return _sample_from_record(record, base)
    except InvalidSample:
        raise
    except (ValueError, TypeError) as error:
        raise InvalidSample("invalid sample", str(error)) from None


def _sample_from_record(record, base):
    if not isinstance(record, dict):
        raise ValueError(f"a line must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field {', '.join(map(repr, unknown))} (the fields are {', '.join(FIELDS)})")
    caption = record.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise InvalidSample("missing caption", "no caption field" if caption is None else f"caption {caption!r}")
    modality = record.get("modality")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    references = record.get("references")
    if isinstance(references, str):
        references = [references]
    if not isinstance(references, list) or not references:
        raise ValueError("references must be a path or a non-empty list of paths")
    references = tuple(_resolve(r, base) for r in references)
    target = record.get("target")
    if target is None and modality in ("image", "video") and len(references) == 1:
        target = references[0]
    elif target is None:
        raise ValueError("missing target")
    else:
        target = _resolve(target, base)
    mask, loss_mask = record.get("mask"), record.get("loss_mask")
    frames = record.get("frames")
    if frames is not None:
        if not isinstance(frames, list):
            raise ValueError(f"frames must be a list of two frame indices, got {frames!r}")
        frames = tuple(frames)
    return Sample(modality=modality, references=references, target=target, caption=caption,
                  mask=None if mask is None else _resolve(mask, base), frames=frames,
                  loss_mask=None if loss_mask is None else _resolve(loss_mask, base), gamma=record.get("gamma"))


def read_manifest(path):
    """-> (samples, problems). A malformed line, an invalid sample or a missing file is a Problem
    at 'path:line'; blank lines are ignored. Nothing is decoded."""
    path = Path(path)
    base = str(path.resolve().parent)
    samples, problems = [], []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(Problem(where, "malformed line", str(error)))
                continue
            try:
                sample = sample_from_record(record, base)
            except InvalidSample as error:
                problems.append(Problem(where, error.reason, error.detail))
                continue
            missing = [p for p in sample.paths() if not os.path.exists(p)]
            if missing:
                problems.append(Problem(where, "missing file", ", ".join(missing)))
                continue
            samples.append(sample)
    return samples, problems


def read_manifests(paths):
    """read_manifest of several manifests: (their samples in order, their problems)."""
    samples, problems = [], []
    for path in paths:
        found, bad = read_manifest(path)
        samples += found
        problems += bad
    return samples, problems


def _portable(path, base):
    """Relative to base when the file is inside base's tree, else absolute."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute, base)
    except ValueError:  # another drive (Windows)
        return absolute
    return absolute if relative == os.pardir or relative.startswith(os.pardir + os.sep) else Path(relative).as_posix()


def sample_to_record(sample, base):
    record = {"modality": sample.modality,
              "references": [_portable(r, base) for r in sample.references],
              "target": _portable(sample.target, base),
              "caption": sample.caption}
    if sample.mask is not None:
        record["mask"] = _portable(sample.mask, base)
    if sample.loss_mask is not None:
        record["loss_mask"] = _portable(sample.loss_mask, base)
    if sample.frames is not None:
        record["frames"] = list(sample.frames)
    if sample.gamma is not None:
        record["gamma"] = sample.gamma
    return record


def _last_byte(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def write_manifest(samples, path, append=False):
    """Write samples as JSONL (paths relative to the manifest's folder where they are inside it).
    append: add to an existing file instead of replacing it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = str(path.resolve().parent)
    ends_mid_line = append and path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with open(path, "a" if append else "w", encoding="utf-8") as out:
        if ends_mid_line:
            out.write("\n")
        for sample in samples:
            out.write(json.dumps(sample_to_record(sample, base), ensure_ascii=False) + "\n")
