"""An on-disk cache of the frozen features of each sample (VAE latents, prompt embedding, CLIP
[CLS], DINOv2 patches), so later epochs skip the VAE, the text encoder, CLIP-H and DINOv2-L.

One safetensors file per sample, named by its dataset index and written atomically; the cache
folder records which data it belongs to, so a changed manifest or resolution is refused rather
than mixed. It keeps the first augmentation and frame pair each sample was encoded with.
"""
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

NAMES = ("latents", "text", "clip", "dino")
SHARD = 1000  # files per sub-folder


class FeatureCache:
    def __init__(self, folder, identity):
        """identity: a JSON-able description of what is cached (data, resolution, encoders)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        identity = json.loads(json.dumps(identity))  # tuples as lists, as the saved stamp reads back
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
        save_file({name: features[name].detach().cpu().contiguous() for name in NAMES}, tmp)
        os.replace(tmp, path)
