#!/usr/bin/env python
"""Benchmark: training items per second from tar shards (flexip_train.stream) against today's
per-file path (a manifest: FlexIPDataset + BalancedSampler, as the Trainer reads it), at 1, 2
and 4 DataLoader workers, in one process, on synthetic data made here.

The data: --samples image samples and as many two-view multi-view samples (JPEG pictures of
--picture px with smooth colours and noise, as photographs compress), their manifests built by
the builders, and the same samples written as shards by `python -m flexip_train shards`'s writer.

Two measurements per path and worker count, each after a warm-up batch (worker start-up is not
counted), conditions interleaved in rounds and the median of --rounds reported:
  items    decoded training items (pictures decoded, cropped and resized to --resolution): what
           the Trainer gets;
  read     only the files' bytes: per-file, each sample's files read from disk; shards, each
           sample's members read from the tars by WebDataset (no decoding). This isolates the
           cost of many small files, which on network storage is what shards remove.

Run:  .host/venv/bin/python benchmarks/shards.py [--samples 400] [--workers 1 2 4] [--rounds 3]
The page cache is warm for both paths (every file is read once before timing): on local disk
that is the fair comparison; a network file system would widen the gap, not measured here.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flexip_train.builders import images_manifest, multiview_manifest  # noqa: E402
from flexip_train.dataset import BalancedSampler, FlexIPDataset, SampleLoader  # noqa: E402
from flexip_train.manifest import read_manifest, write_manifest  # noqa: E402
from flexip_train.shards import write_shards  # noqa: E402
from flexip_train.stream import ShardStream  # noqa: E402

BATCH = 8


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=400, help="image samples, and as many multi-view ones (default 400)")
    p.add_argument("--picture", type=int, default=640, help="side of the JPEG pictures (default 640)")
    p.add_argument("--resolution", type=int, default=512, help="training resolution (default 512)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batches", type=int, default=20, help=f"timed batches of {BATCH} of decoded items (default 20)")
    p.add_argument("--read-batches", type=int, default=400,
                   help=f"timed batches of {BATCH} when only reading bytes (default 400: reading is fast)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--folder", type=Path, help="where to write the data (default: a temporary folder); "
                                               "data already there (its shards.json) is used again")
    return p.parse_args()


def picture(rng, side):
    y, x = np.mgrid[0:side, 0:side] / side
    centre = rng.uniform(0.2, 0.8, 2)
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / 0.05)
    colour = rng.uniform(0.1, 0.9, 3)
    pixels = 0.2 + 0.4 * y[..., None] + blob[..., None] * (colour - 0.2) + rng.normal(0, 0.04, (side, side, 3))
    return Image.fromarray((pixels.clip(0, 1) * 255).astype(np.uint8))


def make_data(folder, samples, side):
    rng = np.random.default_rng(0)
    for i in range(samples):
        path = folder / "images" / f"{i // 100:03d}" / f"subject{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(rng, side).save(path, quality=90)
        path.with_suffix(".txt").write_text(f"a photo of subject {i}")
    for o in range(samples // 2):
        for v in range(2):
            path = folder / "multiview" / f"object{o}" / f"view{v}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture(rng, side).save(path, quality=90)
        (folder / "multiview" / f"object{o}" / "caption.txt").write_text(f"object {o} turned around")
    manifests = []
    for name, build in (("images", images_manifest), ("multiview", multiview_manifest)):
        found, problems = build(folder / name, pairs_per_view=1, progress=False) if name == "multiview" else \
            build(folder / name, progress=False)
        assert found and not problems, problems
        manifests.append(folder / f"{name}.jsonl")
        write_manifest(found, manifests[-1])
    return manifests


class FileBytes(torch.utils.data.Dataset):
    """The per-file path without decoding: a sample's files read from disk."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return sum(len(Path(p).read_bytes()) for p in self.samples[index].paths())


class ShardBytes(ShardStream):
    """The shard path without decoding: each sample's members as WebDataset reads them."""

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        stream = self.rank + self.world * (info.id if info else 0)
        sources = [self.raw_items(kind, stream, 0) for kind in self.present]
        while True:
            for source in sources:
                _, raw = next(source)
                yield sum(len(v) for k, v in raw.items() if not k.startswith("__"))


def manifest_loader(samples, resolution, workers, bytes_only):
    sampler = BalancedSampler(samples, seed=0)
    indices = [i for epoch in range(100) for i in sampler.epoch_order(epoch)]
    batches = [indices[i:i + BATCH] for i in range(0, len(indices) - BATCH + 1, BATCH)]
    dataset = FileBytes(samples) if bytes_only else FlexIPDataset(samples, resolution, 448, seed=0)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=list)


def shard_loader(folder, resolution, workers, bytes_only):
    kind = ShardBytes if bytes_only else ShardStream
    stream = kind(folder, SampleLoader(resolution, 448), seed=0, workers=workers, buffer=100)
    return DataLoader(stream, batch_size=BATCH, num_workers=workers, collate_fn=list)


def items_per_second(loader, batches):
    iterator = iter(loader)
    for _ in range(max(2, loader.num_workers)):  # warm-up: every worker started and has served
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator
    return batches * BATCH / elapsed


def main():
    args = parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        started = time.perf_counter()
        if (folder / "shards" / "shards.json").exists():
            manifests = [folder / "images.jsonl", folder / "multiview.jsonl"]
            index = json.loads((folder / "shards" / "shards.json").read_text())
        else:
            manifests = make_data(folder, args.samples, args.picture)
            index, problems = write_shards(manifests, folder / "shards", samples_per_shard=50, progress=False)
            assert not problems, problems
        samples = [s for m in manifests for s in read_manifest(m)[0]]
        files = sum(1 for s in samples for _ in s.paths())
        size = sum((folder / "shards" / s["name"]).stat().st_size for s in index["shards"])
        print(f"data: {len(samples)} samples, {files} files; {len(index['shards'])} shards, {size / 2**20:.1f} MiB; "
              f"made in {time.perf_counter() - started:.0f} s")
        for shard in index["shards"]:  # warm the page cache for both paths
            (folder / "shards" / shard["name"]).read_bytes()
        for s in samples:
            for p in s.paths():
                Path(p).read_bytes()
        results = {}
        for round_ in range(args.rounds):
            for workers in args.workers:
                for what in ("items", "read"):
                    for path in ("per-file", "shards"):
                        make = manifest_loader if path == "per-file" else shard_loader
                        source = samples if path == "per-file" else folder / "shards"
                        batches = args.read_batches if what == "read" else args.batches
                        rate = items_per_second(make(source, args.resolution, workers, what == "read"), batches)
                        results.setdefault((what, workers, path), []).append(rate)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        print(f"\nsamples/s, median of {args.rounds} rounds of {args.batches} batches of {BATCH} items "
              f"({args.resolution} px from {args.picture} px JPEGs) or {args.read_batches} batches read:")
        print(f"{'what':6} {'workers':>7} {'per-file':>10} {'shards':>10} {'shards/per-file':>16}")
        for what in ("items", "read"):
            for workers in args.workers:
                a, b = (statistics.median(results[(what, workers, p)]) for p in ("per-file", "shards"))
                print(f"{what:6} {workers:7d} {a:10.1f} {b:10.1f} {b / a:16.2f}")


if __name__ == "__main__":
    main()
