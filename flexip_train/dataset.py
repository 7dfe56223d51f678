"""The training data: samples -> tensors (FlexIPDataset), drawn invariant:variant 1:1 (BalancedSampler).

Everything random is seeded by (seed, epoch, index), so an epoch's data is the same in every run
and on every number of workers, and a run resumed mid-epoch sees exactly what it would have seen.
Set the epoch on both before each epoch's DataLoader iterator is made (DataLoader workers copy
the dataset then; with persistent_workers=True they would keep the old epoch).

Items (see FlexIPDataset.__getitem__) use ComfyUI's IMAGE layout, [.., H, W, 3] in [0, 1], which
flexip_core.preprocess.preprocess_reference takes; batch them with `collate`.
"""
import io

import numpy as np
import torch
from PIL import Image

from .manifest import MAX_GAP, MIN_GAP
from .media import TooFewFrames, frame_count, load_image, load_mask, read_frames

# Light augmentation of an image sample's reference (the target stays the clean picture), so the
# adapters cannot copy pixels: a square crop of 80-100% of the shorter side anywhere in the
# picture, a horizontal flip half the time, brightness, contrast and saturation each x0.9-1.1.
CROP_SCALE = (0.8, 1.0)
FLIP_PROBABILITY = 0.5
JITTER = 0.1
LUMA = (0.299, 0.587, 0.114)
KINDS = ("invariant (image)", "variant (video, multi-view)")


class LoadError(Exception):
    """A sample's file that did not load: its path and why."""
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _guarded(path, what, read, *args):
    try:
        return read(*args)
    except LoadError:
        raise
    except TooFewFrames as error:
        raise LoadError(path, f"too few frames: {error}") from error
    except Exception as error:  # decoders raise many types (OSError, SyntaxError, av errors...)
        raise LoadError(path, f"{what}: {error or type(error).__name__}") from error


def centre_box(width, height):
    """The central square as a box in fractions of the width and height."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left / width, top / height, (left + side) / width, (top + side) / height


def square(image, side, box, flip=False, resample=Image.BICUBIC):
    """The box (fractions, so it fits any decoded scale of the picture) of a PIL image at side x side."""
    width, height = image.size
    pixels = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    out = image.resize((side, side), resample, box=pixels)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def to_tensor(image):
    """PIL RGB -> float32 [H, W, 3] in [0, 1]; L -> [H, W]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def draw_augmentation(rng, width, height):
    """(box, flip, (brightness, contrast, saturation)) for one reference of a width x height picture."""
    side = rng.uniform(*CROP_SCALE) * min(width, height)
    left, top = rng.uniform(0, width - side), rng.uniform(0, height - side)
    box = (left / width, top / height, (left + side) / width, (top + side) / height)
    flip = bool(rng.random() < FLIP_PROBABILITY)
    return box, flip, tuple(rng.uniform(1 - JITTER, 1 + JITTER, size=3))


def jitter_colour(image, brightness, contrast, saturation):
    """[H, W, 3] in [0, 1]: scale brightness, contrast about the mean, saturation about the grey."""
    x = image * brightness
    mean = x.mean()
    x = (x - mean) * contrast + mean
    grey = (x * torch.tensor(LUMA, dtype=x.dtype)).sum(-1, keepdim=True)
    return ((x - grey) * saturation + grey).clamp(0.0, 1.0)


class SampleLoader:
    """A sample (manifest.Sample) -> training tensors; FlexIPDataset over a manifest's samples,
    flexip_train.stream over shards.

    resolution: the target's side (square: shorter side resized, centre crop). reference_size: the
    side references are loaded at, before the encoders' own preprocessing. min_gap, max_gap: the
    frame distance of a video pair drawn at random (a sample's fixed frames are used as given).
    augment: the image samples' light reference augmentation (off: the reference is the clean
    centre square, as for video and multi-view samples). loss_masks: items carry the target's
    loss mask (the Trainer asks for them when loss.subject_weight is not 1).
    """

    def __init__(self, resolution=512, reference_size=448, min_gap=MIN_GAP, max_gap=MAX_GAP, augment=True,
                 loss_masks=False):
        if not 1 <= min_gap <= max_gap:
            raise ValueError(f"FlexIPDataset: need 1 <= min_gap <= max_gap, got {min_gap}, {max_gap}")
        self.resolution, self.reference_size = int(resolution), int(reference_size)
        self.min_gap, self.max_gap, self.augment = int(min_gap), int(max_gap), augment
        self.loss_masks = loss_masks
        self._frame_counts = {}

    def frame_total(self, path):
        """A video's frame count as counted when it was loaded (None before)."""
        return self._frame_counts.get(path)

    def load_sample(self, sample, rng, files=None, frame_total=None):
        """A Sample's tensors. files: {name: bytes, or a frame list's [bytes, ...]} holding the
        sample's files by the names its paths give (a sample read from a shard), else the paths are
        read; frame_total: a video's frame count when known (else counted once per path)."""
        def source(path):
            if files is None:
                return path
            data = files[path]
            return [io.BytesIO(frame) for frame in data] if isinstance(data, list) else io.BytesIO(data)

        if sample.modality == "video":
            if files is not None and frame_total is None and sample.frames is None:  # names repeat across shards
                frame_total = _guarded(sample.target, "unreadable video", frame_count, source(sample.target))
            reference, target = self._video_frames(sample, rng, source(sample.target), frame_total)
            references = [(reference, None)]
            target_size = target.size
        else:
            pictures = {}
            side = max(self.resolution, self.reference_size)
            for path in dict.fromkeys((*sample.references, sample.target)):
                pictures[path] = _guarded(path, "unreadable image", load_image, source(path), side)
            references = [(pictures[p][0], pictures[p][1]) for p in sample.references]
            target, target_size = pictures[sample.target]
        masks = [None] * len(references)
        if sample.mask is not None:  # a Sample with a mask has one reference
            image, full_size = references[0]
            masks[0] = _guarded(sample.mask, "bad mask", load_mask, source(sample.mask), full_size or image.size)
        loaded = [self._reference(image, mask, sample.modality == "image", rng)
                  for (image, _), mask in zip(references, masks)]
        box = centre_box(*target.size)
        item = {"reference": torch.stack([r for r, _ in loaded]),
                "reference_mask": torch.stack([m for _, m in loaded]),
                "target": to_tensor(square(target, self.resolution, box)),
                "caption": sample.caption,
                "is_variant": sample.is_variant}
        if sample.gamma is not None:
            item["gamma"] = sample.gamma
        if self.loss_masks:
            if sample.loss_mask is None:
                item["loss_mask"] = torch.ones(self.resolution, self.resolution)
            else:
                mask = _guarded(sample.loss_mask, "bad loss mask", load_mask, source(sample.loss_mask), target_size)
                item["loss_mask"] = to_tensor(square(mask, self.resolution, box, resample=Image.BILINEAR))
        return item

    def _reference(self, image, mask, invariant, rng):
        side = self.reference_size
        if invariant and self.augment:
            box, flip, jitter = draw_augmentation(rng, *image.size)
        else:
            box, flip, jitter = centre_box(*image.size), False, None
        reference = to_tensor(square(image, side, box, flip))
        if jitter is not None:
            reference = jitter_colour(reference, *jitter)
        if mask is None:
            return reference, torch.ones(side, side)
        return reference, to_tensor(square(mask, side, box, flip, resample=Image.BILINEAR))

    def _video_frames(self, sample, rng, video, count=None):
        path = sample.target
        if sample.frames is not None:
            pair = sample.frames
        else:
            if count is None:
                if path not in self._frame_counts:
                    self._frame_counts[path] = _guarded(path, "unreadable video", frame_count, video)
                count = self._frame_counts[path]
            if count < self.min_gap + 1:
                raise LoadError(path, f"too few frames: {count}, a pair {self.min_gap} apart needs {self.min_gap + 1}")
            gap = int(rng.integers(self.min_gap, min(self.max_gap, count - 1) + 1))
            first = int(rng.integers(0, count - gap))
            pair = (first, first + gap) if rng.random() < 0.5 else (first + gap, first)
        side = max(self.resolution, self.reference_size)
        frames = _guarded(path, "unreadable video", read_frames, video, pair, side)
        return frames[pair[0]], frames[pair[1]]


class FlexIPDataset(SampleLoader, torch.utils.data.Dataset):
    """Samples (manifest.Sample) -> training items, by index; the options are SampleLoader's.
    seed: with the epoch and the index, seeds each item's augmentation and frame pair."""

    def __init__(self, samples, resolution=512, reference_size=448, seed=0, min_gap=MIN_GAP, max_gap=MAX_GAP,
                 augment=True, loss_masks=False):
        self.samples = list(samples)
        if not self.samples:
            raise ValueError("FlexIPDataset: no samples (build a manifest with python -m flexip_train.build_manifest)")
        if seed < 0:
            raise ValueError(f"FlexIPDataset: the seed must be >= 0, got {seed}")
        super().__init__(resolution, reference_size, min_gap, max_gap, augment, loss_masks)
        self.seed = int(seed)
        self.epoch = 0
        self.pools = {kind: [i for i, s in enumerate(self.samples) if s.is_variant == kind] for kind in (False, True)}
        self._place = {i: n for pool in self.pools.values() for n, i in enumerate(pool)}

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        """-> {"reference": [R, S, S, 3], "reference_mask": [R, S, S] (ones where there is no mask),
        "target": [resolution, resolution, 3], "caption": str, "is_variant": bool, "index": the
        sample loaded, "requested_index": index, "skipped": [(path, reason), ...]}; with loss_masks
        also "loss_mask": [resolution, resolution], the target's subject mask cropped as the target
        (ones where the sample has none).

        A sample that does not load is recorded in "skipped" and the next sample of the same kind
        (invariant or variant, in manifest order, wrapping around) is loaded instead; RuntimeError
        only when no sample of that kind loads."""
        index = int(index)
        pool = self.pools[self.samples[index].is_variant]
        start, skipped = self._place[index], []
        for step in range(len(pool)):
            candidate = pool[(start + step) % len(pool)]
            try:
                item = self.load(candidate, self.item_rng(index, candidate))
            except LoadError as error:
                skipped.append((error.path, error.reason))
                continue
            return {**item, "index": candidate, "requested_index": index, "skipped": skipped}
        kind = KINDS[self.samples[index].is_variant]
        listed = "\n".join(f"  {path}: {reason}" for path, reason in skipped[:10])
        raise RuntimeError(f"FlexIPDataset: none of the {len(pool)} {kind} samples loads; fix or remove them "
                           f"(rebuild the manifest with the builders, which report bad files). First ones:\n{listed}")

    def item_rng(self, index, candidate):
        """The generator of candidate's augmentation and frame pair when index is asked for, this epoch."""
        return np.random.default_rng([self.seed, self.epoch, index, candidate])

    def load(self, index, rng):
        """One sample's tensors without substitution; raises LoadError naming the file that failed."""
        return self.load_sample(self.samples[index], rng)


def collate(items):
    """Items -> a batch: tensors stacked ([B, R, ...] for references; loss_mask where the items have it),
    captions as a list, and every item's skipped (path, reason) in one list."""
    counts = {item["reference"].shape[0] for item in items}
    if len(counts) > 1:
        raise ValueError(f"collate: the batch mixes samples with {sorted(counts)} references; "
                         "keep one reference count per manifest, or use batch size 1")
    return {"reference": torch.stack([item["reference"] for item in items]),
            "reference_mask": torch.stack([item["reference_mask"] for item in items]),
            "target": torch.stack([item["target"] for item in items]),
            "caption": [item["caption"] for item in items],
            "is_variant": torch.tensor([item["is_variant"] for item in items]),
            "index": torch.tensor([item["index"] for item in items]),
            "requested_index": torch.tensor([item["requested_index"] for item in items]),
            "skipped": [entry for item in items for entry in item["skipped"]],
            **({"loss_mask": torch.stack([item["loss_mask"] for item in items])} if "loss_mask" in items[0] else {})}


class BalancedSampler(torch.utils.data.Sampler):
    """Indices drawing invariant (image) and variant (video, multi-view) samples 1:1, the paper's
    resampling: each epoch every sample of the larger pool comes once (a few twice, so the epoch
    splits evenly), the smaller pool is cycled through in fresh shuffles to the same length, and
    the two alternate in pairs (which comes first drawn at random), so any even batch is balanced.

    Deterministic for (seed, epoch). DDP: rank r of num_replicas gets the r-th of num_replicas
    equal, disjoint, interleaved shares (rank r takes positions r, r + num_replicas, ...: a step's
    global batch is the same samples whatever the number of processes). Resume: state_dict(consumed) / load_state_dict(state), a
    JSON-serialisable dict; or set_epoch(epoch, start_index). Only one kind present: it is drawn
    alone and `warning` says so (None otherwise).
    """

    STATE_FORMAT = "flexip_balanced_sampler/1"

    def __init__(self, samples, seed=0, num_replicas=1, rank=0):
        samples = getattr(samples, "samples", samples)  # a FlexIPDataset or its samples
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"BalancedSampler: need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        self.pools = [[i for i, s in enumerate(samples) if s.is_variant == kind] for kind in (False, True)]
        if not any(self.pools):
            raise ValueError("BalancedSampler: no samples")
        if seed < 0:
            raise ValueError(f"BalancedSampler: the seed must be >= 0, got {seed}")
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch, self.start_index = 0, 0
        self.warning = None
        if not all(self.pools):
            present, absent = KINDS[::-1] if self.pools[1] else KINDS
            self.warning = (f"BalancedSampler: only {present} samples, no {absent} ones: drawing them alone, "
                            "without the 1:1 balance")

    def epoch_order(self, epoch):
        """Every rank's indices for an epoch, in order (rank r takes every num_replicas-th, from position r)."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        pools = [pool for pool in self.pools if pool]
        length = self._pool_length()
        drawn = [_cycled_shuffles(rng, pool, length) for pool in pools]
        if len(drawn) == 1:
            return drawn[0].tolist()
        pairs = np.stack(drawn, axis=1)
        swap = rng.random(length) < 0.5
        pairs[swap] = pairs[swap, ::-1]
        return pairs.reshape(-1).tolist()

    def _pool_length(self):
        """Indices per kind in an epoch: the larger pool's size, rounded up so the epoch splits evenly."""
        kinds = sum(1 for pool in self.pools if pool)
        length = max(len(pool) for pool in self.pools)
        while (length * kinds) % self.num_replicas:
            length += 1
        return length

    def share(self, epoch):
        """This rank's indices for an epoch, from its start."""
        return self.epoch_order(epoch)[self.rank::self.num_replicas]

    def set_epoch(self, epoch, start_index=0):
        """Draw epoch `epoch` from position start_index of this rank's share (0: the whole share)."""
        length = len(self.share(epoch))
        if not 0 <= start_index <= length:
            raise ValueError(f"BalancedSampler: start_index {start_index} is outside this rank's {length} indices")
        self.epoch, self.start_index = int(epoch), int(start_index)

    def __iter__(self):
        return iter(self.share(self.epoch)[self.start_index:])

    def __len__(self):
        """This rank's indices still to come this epoch (all of them unless resumed mid-epoch)."""
        kinds = sum(1 for pool in self.pools if pool)
        return self._pool_length() * kinds // self.num_replicas - self.start_index

    def state_dict(self, consumed):
        """consumed: the indices this rank took from this sampler since the epoch (or the resume)
        started, batches x batch size; not what the DataLoader prefetched."""
        position = self.start_index + int(consumed)
        if not self.start_index <= position <= self.start_index + len(self):
            raise ValueError(f"BalancedSampler: consumed {consumed} is outside 0..{len(self)}")
        return {"format": self.STATE_FORMAT, "seed": self.seed, "epoch": self.epoch, "position": position,
                "num_replicas": self.num_replicas, "pool_sizes": [len(pool) for pool in self.pools]}

    def load_state_dict(self, state):
        if state.get("format") != self.STATE_FORMAT:
            raise ValueError(f"BalancedSampler: not a sampler state of this version: {state.get('format')!r}")
        here = {"seed": self.seed, "num_replicas": self.num_replicas, "pool_sizes": [len(p) for p in self.pools]}
        differs = {k: (state.get(k), v) for k, v in here.items() if state.get(k) != v}
        if differs:
            raise ValueError("BalancedSampler: the saved state is of another setup, so the epoch's order would "
                             "differ (saved, now): " + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differs.items()))
        self.set_epoch(state["epoch"], state["position"])


def _cycled_shuffles(rng, pool, length):
    """length indices from pool: fresh shuffles of the whole pool one after another, cut to length."""
    rounds = -(-length // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:length]
