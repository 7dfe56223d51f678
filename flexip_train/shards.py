"""Tar shards of a manifest's samples in WebDataset's layout, and the index that describes them.

A shard set is a folder of `invariant-NNNNNN.tar` (image samples) and `variant-NNNNNN.tar` (video
and multi-view samples; the two kinds are kept apart so training can draw them 1:1) and
`shards.json`, the index: every shard's name, kind and sample count. One sample is the tar
members sharing its key (its index in the set, 9 digits):

    000000012.json           the manifest fields, with the sample's member names for its paths,
                             and "source": its manifest line as written (paths relative to the
                             manifest's folder), "index", and a video's "frame_total"
    000000012.ref0.jpg       a reference (the file's bytes, unchanged)
    000000012.target.png     the target, when it is not a reference
    000000012.ref0.mp4       a video: the clip itself
    000000012.ref0.f000003.png   or a frame folder: its frames in order (JSON "frame_lists")
    000000012.mask.png, 000000012.loss_mask.png   the masks

The writer validates as the manifest reader does (fields, files present) and also decodes each
sample as training would, so a sample that would fail to load is reported, not written.
WebDataset writes the tars (TarWriter) and reads them (tarfile_samples). A feature set
(feature_shards.py: the samples' frozen features) has the same index, with "content": "features".
"""
import json
import os
from pathlib import Path

import numpy as np
import webdataset as wds

from .dataset import LoadError, SampleLoader
from .manifest import Problem, read_manifest, sample_from_record, sample_to_record
from .media import list_frames

INDEX = "shards.json"
FORMAT = "flexip_shards/1"
KINDS = ("invariant", "variant")
PATH_FIELDS = ("references", "target", "mask", "loss_mask")
CHECK_SIDE = 64  # the validation decodes at this side: every file is read, little time is spent resizing


def kind_of(sample):
    return KINDS[sample.is_variant]


def sample_members(sample):
    """-> (members {extension: bytes}, JSON fields {field: member name(s)}, frame lists {name: [members]})."""
    members, names, frame_lists = {}, {}, {}

    def add(path, stem):
        if path not in names:
            if Path(path).is_dir():
                frames = [f"{stem}.f{i:06d}{frame.suffix.lower()}" for i, frame in enumerate(list_frames(path))]
                for name, frame in zip(frames, list_frames(path)):
                    members[name] = frame.read_bytes()
                names[path] = f"{stem}.frames"
                frame_lists[names[path]] = frames
            else:
                names[path] = f"{stem}{Path(path).suffix.lower()}"
                members[names[path]] = Path(path).read_bytes()
        return names[path]

    fields = {"references": [add(path, f"ref{i}") for i, path in enumerate(sample.references)],
              "target": add(sample.target, "target")}
    for field in ("mask", "loss_mask"):
        if getattr(sample, field) is not None:
            fields[field] = add(getattr(sample, field), field)
    return members, fields, frame_lists


def read_shard_sample(raw):
    """A sample as WebDataset reads it ({"__key__", "json", extension: bytes}) -> (Sample whose paths are
    member names, {name: bytes or [frame bytes]}, its JSON)."""
    info = json.loads(raw["json"])
    record = {k: info[k] for k in ("modality", "caption", "frames", "gamma", *PATH_FIELDS) if info.get(k) is not None}
    sample = sample_from_record(record, "")
    files = {name: raw[name] for name in dict.fromkeys(sample.paths()) if name not in info["frame_lists"]}
    files.update({name: [raw[frame] for frame in frames] for name, frames in info["frame_lists"].items()})
    return sample, files, info


def read_index(folder):
    path = Path(folder) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {INDEX}; write a shard set with python -m flexip_train shards")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: not a shard index of this version ({index.get('format')!r}, expected {FORMAT!r})")
    return index


def iterate_shards(paths):
    """Raw samples of tar files in order (WebDataset's reader)."""
    return wds.tarfile_samples(iter([{"url": str(path)} for path in paths]))


def empty_folder(out):
    """out, made if new; FileExistsError if it already holds a shard set."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX).exists() or any(out.glob("*.tar")):
        raise FileExistsError(f"{out} already holds a shard set; write to an empty folder")
    return out


def set_index(content, series, samples, loss_masks, **fields):
    """The index of a set written by `series` ({kind: ShardSeries}, closed): content "samples" or
    "features", the sample counts per kind and the shards, then the set's own fields."""
    shards = [shard for writer in series.values() for shard in writer.shards]
    return {"format": FORMAT, "content": content, "samples": samples,
            "kinds": {kind: sum(s["samples"] for s in shards if s["kind"] == kind) for kind in KINDS},
            "loss_masks": loss_masks, "shards": shards, **fields}


def write_index(out, index):
    """The index, renamed into place once written: a folder with shards.json is complete."""
    (out / (INDEX + ".partial")).write_text(json.dumps(index, indent=1))
    os.replace(out / (INDEX + ".partial"), out / INDEX)


class ShardSeries:
    """One kind's shards, written one after another, each renamed into place when complete
    (after samples_per_shard samples, or at close(); None: only at close())."""

    def __init__(self, folder, kind, samples_per_shard):
        self.folder, self.kind, self.limit = folder, kind, samples_per_shard
        self.shards, self.writer, self.count = [], None, 0

    def write(self, sample):
        if self.writer is None:
            self.name = f"{self.kind}-{len(self.shards):06d}.tar"
            self.partial = self.folder / (self.name + ".partial")
            self.writer, self.count = wds.TarWriter(str(self.partial), encoder=False), 0
        self.writer.write(sample)
        self.count += 1
        if self.count == self.limit:
            self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            os.replace(self.partial, self.folder / self.name)
            self.shards.append({"name": self.name, "kind": self.kind, "samples": self.count})
            self.writer = None


def write_shards(manifests, out, samples_per_shard=1000, check=True, progress=True):
    """Every usable sample of the manifests into tar shards in out, and the index. -> (index, problems).

    check: decode each sample as training would (at CHECK_SIDE px) and leave out, as a Problem,
    one that does not load."""
    from tqdm import tqdm
    if samples_per_shard < 1:
        raise ValueError(f"samples per shard must be at least 1, got {samples_per_shard}")
    out = empty_folder(out)
    read = [(Path(m), *read_manifest(m)) for m in manifests]
    problems = [p for _, _, bad in read for p in bad]
    total = sum(len(samples) for _, samples, _ in read)
    series = {kind: ShardSeries(out, kind, samples_per_shard) for kind in KINDS}
    written = loss_masks = 0
    checker = SampleLoader(CHECK_SIDE, CHECK_SIDE, augment=False)
    bar = tqdm(total=total, desc=f"shards in {out}", unit="sample", disable=not progress)
    for manifest, samples, _ in read:
        base = str(manifest.resolve().parent)
        for sample in samples:
            bar.update()
            frame_total = None
            if check:
                try:
                    checker.load_sample(sample, np.random.default_rng(0))
                    if sample.modality == "video":
                        frame_total = checker.frame_total(sample.target)
                except LoadError as error:
                    problems.append(Problem(error.path, error.reason))
                    continue
            members, fields, frame_lists = sample_members(sample)
            info = {"modality": sample.modality, "caption": sample.caption, **fields,
                    **({"frames": list(sample.frames)} if sample.frames else {}),
                    **({"gamma": sample.gamma} if sample.gamma is not None else {}),
                    "frame_lists": frame_lists, "frame_total": frame_total, "index": written,
                    "source": sample_to_record(sample, base)}
            series[kind_of(sample)].write({"__key__": f"{written:09d}", "json": json.dumps(info).encode(),
                                           **members})
            written += 1
            loss_masks += sample.loss_mask is not None
    bar.close()
    for writer in series.values():
        writer.close()
    index = set_index("samples", series, written, loss_masks, samples_per_shard=samples_per_shard,
                      manifests=[str(m.resolve()) for m, _, _ in read])
    write_index(out, index)
    return index, problems
