"""The frozen features of each sample (VAE latents, prompt embedding, CLIP [CLS], DINOv2
patches): encoding them (encode_features), and an on-disk cache of them, so later epochs skip the
VAE, the text encoder, CLIP-H and DINOv2-L.

One safetensors file per sample, named by its dataset index and written atomically; the cache
folder records which data it belongs to, so a changed manifest or resolution is refused rather
than mixed. It keeps the first augmentation and frame pair each sample was encoded with.
For millions of samples, flexip_train.feature_shards writes the same features as tar shards.
"""
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

NAMES = ("latents", "text", "clip", "dino")
SHARD = 1000  # files per sub-folder


def encode_features(base, items):
    """The frozen features of dataset items, encoded in one batch: [{name: tensor}], one per item.
    Several references of a sample are averaged, as the ReferenceEncoder node's default "average" does."""
    counts = [item["reference"].shape[0] for item in items]
    clip, dino = base.reference(torch.cat([item["reference"] for item in items]),
                                torch.cat([item["reference_mask"] for item in items]))
    latents = base.latents(torch.stack([item["target"] for item in items]))
    text = base.text([item["caption"] for item in items])
    return [{"latents": latents[j], "text": text[j], "clip": c.mean(0), "dino": d.mean(0)}
            for j, (c, d) in enumerate(zip(clip.split(counts), dino.split(counts)))]


def data_identity(config, flexip_config, samples):
    """What a sample's frozen features depend on, as JSON values: the configured data (its
    manifests or shard set, and its sample count), the resolution, the checkpoint and the image
    encoders. Compared with what a cache or a feature set was written for."""
    data = {"shards": str(Path(config.data.shards).resolve())} if config.data.shards else \
        {"manifests": [str(Path(m).resolve()) for m in config.data.manifests]}
    identity = {**data, "samples": samples, "resolution": config.data.resolution,
                "checkpoint": Path(config.model.checkpoint).name,
                "clip": flexip_config.clip.__dict__, "dino": flexip_config.dino.__dict__}
    return json.loads(json.dumps(identity))  # tuples as lists, as a saved stamp reads back


def saved_features(features):
    """A sample's features as safetensors stores them: CPU, contiguous, detached."""
    return {name: features[name].detach().cpu().contiguous() for name in NAMES}


class FeatureCache:
    def __init__(self, folder, identity):
        """identity: data_identity() of the run (data, resolution, encoders)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = self.folder / "cache.json"
        if stamp.exists():
            saved = json.loads(stamp.read_text())
            if saved != identity:
                raise ValueError(f"[data] feature_cache: {self.folder} holds features of other data or settings "
                                 f"({saved}); use another folder or delete it")
        else:
            stamp.write_text(json.dumps(identity, indent=1))
        self.hits = self.misses = 0

    def _path(self, index):
        return self.folder / f"{index // SHARD:05d}" / f"{index}.safetensors"

    def get(self, index):
        path = self._path(index)
        if not path.exists():
            self.misses += 1
            return None
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError):
            path.unlink(missing_ok=True)  # a damaged entry is simply encoded again
            self.misses += 1
            return None
        self.hits += 1
        return {name: tensors[name] for name in NAMES}

    def put(self, index, features):
        path = self._path(index)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(saved_features(features), tmp)
        os.replace(tmp, path)
