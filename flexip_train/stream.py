"""Training items streamed from a shard set (flexip_train.shards): split by rank and DataLoader
worker, shuffled within a buffer, invariant and variant samples drawn 1:1, resumable at the
sample it stopped at.

Each (rank, worker) pair is a stream, s = rank + processes x worker. A kind's shards are dealt
out in rounds: round r is a permutation of all of the kind's shards drawn from (seed, kind, r),
and stream s reads the shards at positions s, s + streams, ... of it, through WebDataset's tar
reader and shuffle buffer (seeded by seed, kind, stream and round; the buffer is emptied at the
end of each round). A stream never ends: round follows round, so every rank serves the same
number of batches whatever its shards hold, and training counts steps, not epochs.

A stream alternates its two kinds in pairs (which comes first drawn from (seed, stream, pair)),
so a batch of even size from one worker holds as many of each. Every item carries its stream's
cursor (samples taken from each kind, samples served); the Trainer keeps the cursor of the last
item it used from each worker, and the DataLoader takes batches from its workers in turn, so a
stream restarted at its cursor, with the worker turn shifted by the batches already used, serves
exactly the items an unbroken run would have served. Restarting re-reads the tars of the
current round up to the cursor (no decoding); earlier rounds are skipped by their sample counts.

An item's randomness (augmentation, a video's frame pair, and in the Trainer the noise, timestep
and dropout) is drawn from (seed, round, the sample's index in the set): the same whatever the
number of processes and workers. A resumed run needs the same processes and workers.

A feature set (flexip_train.feature_shards: the samples' frozen features, "content": "features"
in its index) streams the same way; its items carry the features instead of pixels.
"""
import random
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from .dataset import LoadError
from .shards import KINDS, iterate_shards, read_index, read_shard_sample

STATE_FORMAT = "flexip_shard_stream/1"


def _seed(*values):
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def item_rng(seed, round_, index):
    """The generator of a streamed sample's augmentation and frame pair in a round."""
    return np.random.default_rng([seed, round_, index])


class ShardStream(torch.utils.data.IterableDataset):
    """content: what the set holds, "samples" (loader: a dataset.SampleLoader, which decodes a
    sample) or "features" (loader: a feature_shards.FeatureLoader). workers: the DataLoader's
    num_workers (0 counts as 1). buffer: the shuffle buffer's size in samples."""

    def __init__(self, folder, loader, seed=0, rank=0, world=1, workers=1, buffer=1000, content="samples"):
        self.folder, self.loader, self.content = Path(folder), loader, content
        index = read_index(folder)
        if index["content"] != content:
            option = {"samples": "[data] shards", "features": "[data] features"}.get(index["content"])
            raise ValueError(f"{folder}: holds {index['content']}, not {content}"
                             + (f": give it as {option}" if option else ""))
        self.index = index
        self.seed, self.rank, self.world, self.workers = int(seed), int(rank), int(world), max(1, int(workers))
        self.buffer = int(buffer)
        if self.buffer < 1:
            raise ValueError(f"ShardStream: the shuffle buffer must hold at least 1 sample, got {buffer}")
        self.sizes = {shard["name"]: shard["samples"] for shard in index["shards"]}
        self.shards = {kind: [s["name"] for s in index["shards"] if s["kind"] == kind] for kind in KINDS}
        self.present = [kind for kind in KINDS if self.shards[kind]]
        if not self.present:
            raise ValueError(f"{folder}: the shard set holds no samples")
        streams = self.world * self.workers
        for kind in self.present:
            if len(self.shards[kind]) < streams:
                raise ValueError(f"{folder}: {len(self.shards[kind])} {kind} shards for {self.world} processes x "
                                 f"{self.workers} workers = {streams} streams, each of which needs at least one: "
                                 "write smaller shards (--samples-per-shard) or use fewer workers")
        self.warning = None if len(self.present) == 2 else \
            f"ShardStream: only {self.present[0]} samples: drawing them alone, without the 1:1 balance"
        self.cursors, self.offset = {}, 0

    @property
    def streams(self):
        return self.world * self.workers

    def round_shards(self, kind, stream, round_):
        shards = self.shards[kind]
        order = np.random.default_rng([self.seed, KINDS.index(kind), round_]).permutation(len(shards))
        return [shards[i] for i in order[stream::self.streams]]

    def raw_items(self, kind, stream, taken):
        """(round, raw sample) of one kind for a stream, round after round, from its taken-th sample on."""
        round_ = 0
        while True:
            shards = self.round_shards(kind, stream, round_)
            size = sum(self.sizes[name] for name in shards)
            if taken >= size:  # a round already served: skipped without reading
                taken -= size
                round_ += 1
                continue
            shuffle = wds.shuffle(self.buffer, self.buffer,
                                  rng=random.Random(_seed(self.seed, KINDS.index(kind), stream, round_)))
            for position, raw in enumerate(shuffle(iterate_shards([self.folder / n for n in shards]))):
                if position >= taken:
                    yield round_, raw
            taken, round_ = 0, round_ + 1

    def kind_at(self, stream, served):
        """Which kind a stream serves as its served-th item."""
        if len(self.present) == 1:
            return self.present[0]
        pair_rng = np.random.default_rng([self.seed, stream, served // 2])
        order = KINDS if pair_rng.random() < 0.5 else KINDS[::-1]
        return order[served % 2]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if (info.num_workers if info else 1) != self.workers:
            raise ValueError(f"ShardStream: made for {self.workers} workers, read by {info.num_workers if info else 1}")
        worker = ((info.id if info else 0) + self.offset) % self.workers
        stream = self.rank + self.world * worker
        cursor = self.cursors.get(worker, {"taken": [0, 0], "served": 0})
        taken, served = list(cursor["taken"]), cursor["served"]
        sources = {kind: self.raw_items(kind, stream, taken[KINDS.index(kind)]) for kind in self.present}
        skipped = []
        while True:
            kind = self.kind_at(stream, served)
            round_, raw = next(sources[kind])
            taken[KINDS.index(kind)] += 1
            try:
                item, index = self.load(raw, round_)
            except LoadError as error:
                skipped.append((f"{raw['__url__']}:{raw['__key__']}.{error.path}", error.reason))
                if len(skipped) > self.index["kinds"][kind]:
                    raise RuntimeError(f"ShardStream: none of the {kind} samples of {self.folder} loads; first: "
                                       f"{skipped[0]}") from error
                continue
            served += 1
            yield {**item, "index": index, "key": (round_, index), "skipped": skipped,
                   "cursor": {"worker": worker, "taken": list(taken), "served": served}}
            skipped = []

    def load(self, raw, round_):
        """A raw shard sample -> (its training item, its index in the set)."""
        if self.content == "features":
            return self.loader.load_features(raw)
        sample, files, meta = read_shard_sample(raw)
        rng = item_rng(self.seed, round_, meta["index"])
        return self.loader.load_sample(sample, rng, files, meta["frame_total"]), meta["index"]

    # --- resume ---

    def state_dict(self, batches, cursors):
        """batches: the batches this rank has used; cursors: {worker: the cursor of the last item used from it}."""
        return {"format": STATE_FORMAT, "seed": self.seed, "world": self.world, "workers": self.workers,
                "shards": len(self.sizes), "batches": int(batches),
                "cursors": {str(w): {"taken": c["taken"], "served": c["served"]} for w, c in cursors.items()}}

    def load_state_dict(self, state):
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"ShardStream: not a stream state of this version: {state.get('format')!r}")
        here = {"seed": self.seed, "world": self.world, "workers": self.workers, "shards": len(self.sizes)}
        differs = {k: (state.get(k), v) for k, v in here.items() if state.get(k) != v}
        if differs:
            raise ValueError("ShardStream: the saved state is of another setup, so the order would differ (saved, "
                             "now): " + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differs.items()))
        self.cursors = {int(w): c for w, c in state["cursors"].items()}
        self.offset = state["batches"] % self.workers
