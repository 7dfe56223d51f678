"""The frozen features of every sample as tar shards, for data of millions of samples: `python -m
flexip_train features` encodes the configured data once, and `[data] features` trains from the
shards without running the frozen encoders (the per-file FeatureCache would be millions of small
files).

A feature set has a shard set's index (shards.json, with "content": "features") and layout. One
sample is two members sharing its key, the sample's index in the data (9 digits):

    000000012.json          {"index", "is_variant", "modality", "caption"}
    000000012.safetensors   latents, text, clip, dino, as encode_features gives them; for a sample
                            with a loss mask also loss_mask, the target's mask as the loader crops
                            it, in uint8 (the loader's values are k / 255, so they come back exact)

Each sample is loaded as training first loads it, from a shard set as in round 0 of the stream and
from manifests as in epoch 0 of the dataset: the features hold that augmentation and frame pair,
as the FeatureCache holds its first. The index records the identity of the data the features
were written for (feature_cache.data_identity: manifests or shard set, sample count, resolution,
checkpoint, image encoders); training refuses a set written for other data or settings.

From a shard set the features keep its shards (one feature tar per sample tar, with the same
name, kind and samples in order), so a run streams the features in the order it would stream the
samples. From manifests, samples keep the dataset's numbering and go samples_per_shard to a tar,
image samples apart from video and multi-view ones.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load, save

from .dataset import FlexIPDataset, LoadError, SampleLoader, to_tensor
from .feature_cache import NAMES, data_identity, encode_features, saved_features
from .manifest import Problem, read_manifests
from .shards import (KINDS, ShardSeries, empty_folder, iterate_shards, kind_of, read_index, read_shard_sample,
                     set_index, write_index)
from .stream import item_rng

SHARD_END = None  # a source's mark between shards: the samples read so far fill one feature shard
WRITE_COMMAND = "python -m flexip_train features --config <the run's config> --out <a new folder>"


def read_feature_index(folder):
    index = read_index(folder)
    if index["content"] != "features":
        raise ValueError(f"[data] features: {folder} holds {index['content']}, not features; write a feature set "
                         f"with {WRITE_COMMAND}")
    return index


def check_identity(folder, index, identity):
    """ValueError, naming what differs, unless the feature set was written for this identity."""
    saved = index["identity"]
    if saved != identity:
        differs = "; ".join(f"{key} {saved.get(key)!r} there, {identity.get(key)!r} here"
                            for key in sorted(set(saved) | set(identity)) if saved.get(key) != identity.get(key))
        raise ValueError(f"[data] features: {folder} holds the features of other data or settings ({differs}); "
                         f"write this run's with {WRITE_COMMAND} and set [data] features to that folder")


class FeatureLoader:
    """A feature set's raw shard sample -> (training item, its index in the data). The item holds
    "features" (encode_items takes them as they are), "is_variant" and a sample's own "gamma"; with loss_masks also
    "loss_mask", ones where the sample has none, as dataset.SampleLoader gives it."""

    def __init__(self, resolution, loss_masks=False):
        self.resolution, self.loss_masks = int(resolution), loss_masks

    def load_features(self, raw):
        info = json.loads(raw["json"])
        tensors = load(raw["safetensors"])
        item = {"features": {name: tensors[name] for name in NAMES}, "is_variant": info["is_variant"],
                **({"gamma": info["gamma"]} if "gamma" in info else {})}
        if self.loss_masks:
            item["loss_mask"] = to_tensor(tensors["loss_mask"].numpy()) if "loss_mask" in tensors else \
                torch.ones(self.resolution, self.resolution)
        return item, info["index"]


def _manifest_source(config, flexip_config, problems):
    """(sample count, (item, index, sample) of each sample that loads, as epoch 0 of the dataset loads it)."""
    samples, bad = read_manifests(config.data.manifests)
    problems += bad
    dataset = FlexIPDataset(samples, config.data.resolution, flexip_config.clip.resolution * 2, seed=config.run.seed,
                            min_gap=config.data.min_gap, max_gap=config.data.max_gap, loss_masks=True)

    def loaded():
        for index, sample in enumerate(samples):
            try:
                yield dataset.load(index, dataset.item_rng(index, index)), index, sample
            except LoadError as error:
                problems.append(Problem(error.path, error.reason))
    return len(samples), loaded()


def _shard_source(config, flexip_config, problems):
    """(sample count, (item, index, sample) of each sample that loads, as round 0 of the stream
    loads it, with SHARD_END after each shard)."""
    folder = Path(config.data.shards)
    index = read_index(folder)
    if index["content"] != "samples":
        raise ValueError(f"[data] shards: {folder} holds {index['content']}, not samples")
    loader = SampleLoader(config.data.resolution, flexip_config.clip.resolution * 2, config.data.min_gap,
                          config.data.max_gap, loss_masks=True)

    def loaded():
        for shard in index["shards"]:
            for raw in iterate_shards([folder / shard["name"]]):
                sample, files, meta = read_shard_sample(raw)
                rng = item_rng(config.run.seed, 0, meta["index"])
                try:
                    yield loader.load_sample(sample, rng, files, meta["frame_total"]), meta["index"], sample
                except LoadError as error:
                    problems.append(Problem(f"{shard['name']}:{raw['__key__']}.{error.path}", error.reason))
            yield SHARD_END
    return index["samples"], loaded()


def write_features(config, base, flexip_config, out, samples_per_shard=1000, progress=True):
    """Every sample of config's data ([data] shards, else manifests), loaded and encoded as training
    loads and encodes it (data.batch_size at a time), into a feature set in out. samples_per_shard:
    manifests only (a shard set's features keep its shards). -> (index, problems)."""
    from tqdm import tqdm
    if samples_per_shard < 1:
        raise ValueError(f"samples per shard must be at least 1, got {samples_per_shard}")
    out = empty_folder(out)
    problems = []
    source = _shard_source if config.data.shards else _manifest_source
    total, loaded = source(config, flexip_config, problems)
    limit = None if config.data.shards else samples_per_shard
    series = {kind: ShardSeries(out, kind, limit) for kind in KINDS}
    pending, written, loss_masks = [], 0, 0
    bar = tqdm(total=total, desc=f"features in {out}", unit="sample", disable=not progress)

    def flush():
        nonlocal written, loss_masks
        if not pending:
            return
        with torch.no_grad():
            encoded = encode_features(base, [item for item, _, _ in pending])
        for (item, index, sample), features in zip(pending, encoded):
            tensors = saved_features(features)
            if sample.loss_mask is not None:
                tensors["loss_mask"] = (item["loss_mask"] * 255).round().to(torch.uint8)
                loss_masks += 1
            info = {"index": index, "is_variant": sample.is_variant, "modality": sample.modality,
                    "caption": sample.caption, **({"gamma": sample.gamma} if sample.gamma is not None else {})}
            series[kind_of(sample)].write({"__key__": f"{index:09d}", "json": json.dumps(info).encode(),
                                           "safetensors": save(tensors)})
        written += len(pending)
        bar.update(len(pending))
        pending.clear()

    for entry in loaded:
        if entry is SHARD_END:
            flush()
            for writer in series.values():
                writer.close()
            continue
        pending.append(entry)
        if len(pending) == config.data.batch_size:
            flush()
    flush()
    bar.close()
    for writer in series.values():
        writer.close()
    index = set_index("features", series, written, loss_masks,
                      identity=data_identity(config, flexip_config, total),
                      encoded={"seed": config.run.seed, "min_gap": config.data.min_gap,
                               "max_gap": config.data.max_gap, "batch_size": config.data.batch_size})
    write_index(out, index)
    return index, problems
