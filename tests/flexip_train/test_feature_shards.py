"""Feature sets (flexip_train.feature_shards, `python -m flexip_train features`, `[data] features`):
the stored tensors are bit for bit what the encode path gives for the samples training would
load, a run from them never encodes and trains exactly as a run whose per-file FeatureCache
holds the same features, resumes exactly, and features of other data or settings are refused.

The tiny base's stand-in encoders are not batch-invariant to the bit (a matmul over 2 rows can
round differently from one over 3), so the expected tensors are encoded in the writer's batches:
data.batch_size samples in order, a batch never spanning two source shards."""
import csv
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from flexip_train.dataset import FlexIPDataset, SampleLoader
from flexip_train.feature_cache import NAMES, encode_features
from flexip_train.feature_shards import FeatureLoader, write_features
from flexip_train.manifest import read_manifests
from flexip_train.shards import iterate_shards, read_index, read_shard_sample, write_shards
from flexip_train.stream import item_rng

from tests.flexip_train.conftest import write_mask

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tiny_base import make_tiny_base  # noqa: E402
from tiny_run import make_trainer, tiny_config, write_data, write_manifests  # noqa: E402

SIDE = 64  # tiny_config's resolution
SEED = 3  # tiny_config's run.seed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny run's 8 image and 8 multi-view samples: (manifests, a shard set of 2 samples a shard)."""
    root = tmp_path_factory.mktemp("feature_data")
    manifests = write_data(root / "data")
    write_shards(manifests, root / "shards", samples_per_shard=2, progress=False)
    return manifests, root / "shards"


def shard_config(run_dir, shards, steps=1, **data):
    return tiny_config(run_dir, [], run={"max_steps": steps},
                       data={"shards": str(shards), "num_workers": 2, "shuffle_buffer": 3, **data})


@pytest.fixture(scope="module")
def feature_set(data, tmp_path_factory):
    """The shard set's features, written in batches of 3 (so each batch is one source shard of 2)."""
    _, shards = data
    out = tmp_path_factory.mktemp("features") / "set"
    base, flexip_config = make_tiny_base(0)
    index, problems = write_features(shard_config(out.parent / "run", shards, batch_size=3), base, flexip_config, out,
                                     progress=False)
    assert not problems
    return out, index


def stored(folder, loss_masks=False):
    """{index: item} of every sample of a feature set, read as training reads them."""
    loader = FeatureLoader(SIDE, loss_masks)
    return {index: item for item, index in map(loader.load_features, iterate_shards(sorted(folder.glob("*.tar"))))}


def forbid_encoding(base):
    """Make the base's encoders fail if a sample is encoded (dropout's empty prompt may still be)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a frozen encoder ran")
    text = base.text
    base.reference = base.latents = refuse
    base.text = lambda captions: text(captions) if captions == [""] else refuse()


def losses(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def final_state(run_dir):
    checkpoint = sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1]
    return [load_file(checkpoint / name) for name in ("model.safetensors", "optimizer.safetensors")]


def assert_same_state(a, b):
    for x, y in zip(final_state(a), final_state(b)):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), \
            [k for k in x if not torch.equal(x[k], y[k])][:5]


def test_features_of_a_shard_set_keep_its_shards_and_are_its_round_0_samples_encoded(data, feature_set):
    _, shards = data
    folder, index = feature_set
    source = read_index(shards)
    assert index["content"] == "features" and index["samples"] == source["samples"] == 16
    assert [(s["name"], s["kind"], s["samples"]) for s in index["shards"]] == \
        [(s["name"], s["kind"], s["samples"]) for s in source["shards"]]
    features = stored(folder)
    base, flexip_config = make_tiny_base(0)
    loader = SampleLoader(SIDE, flexip_config.clip.resolution * 2, 4, 32)  # tiny_config's min_gap and max_gap
    for shard in source["shards"]:
        raws = list(iterate_shards([shards / shard["name"]]))
        kept = [raw["__key__"] for raw in iterate_shards([folder / shard["name"]])]
        assert kept == [raw["__key__"] for raw in raws]  # the same samples in the same order
        read = [read_shard_sample(raw) for raw in raws]
        items = [loader.load_sample(sample, item_rng(SEED, 0, meta["index"]), files, meta["frame_total"])
                 for sample, files, meta in read]
        for (_, _, meta), item, expected in zip(read, items, encode_features(base, items)):
            got = features[meta["index"]]
            assert got["is_variant"] == item["is_variant"]
            assert all(torch.equal(got["features"][name], expected[name]) for name in NAMES), meta["index"]


def test_features_of_manifests_keep_the_dataset_numbering_and_the_loss_masks(tmp_path):
    """Loss masks beside the image samples only: they come back exact, the others as ones; two
    variant samples' own gammas come back with them; a run weighing the masks trains from the
    features without encoding."""
    import dataclasses

    from flexip_train.manifest import read_manifest, write_manifest
    folder = tmp_path / "masked"
    write_data(folder)
    for picture in (folder / "images").glob("*.png"):
        with Image.open(picture) as image:
            write_mask(picture.with_name(picture.stem + ".loss.mask.png"), image.size)
    manifests = write_manifests(folder)
    variant = next(m for m in manifests if all(s.is_variant for s in read_manifest(m)[0]))
    samples = read_manifest(variant)[0]
    write_manifest([dataclasses.replace(s, gamma=0.0) if i < 2 else s for i, s in enumerate(samples)], variant)
    config = tiny_config(tmp_path / "run", manifests, data={"batch_size": 3}, loss={"subject_weight": 3.0})
    base, flexip_config = make_tiny_base(0)
    index, problems = write_features(config, base, flexip_config, tmp_path / "features", samples_per_shard=3,
                                     progress=False)
    assert not problems and (index["samples"], index["loss_masks"]) == (16, 8)
    assert [s["samples"] for s in index["shards"]] == [3, 3, 2, 3, 3, 2]  # 8 of each kind, 3 to a tar

    dataset = FlexIPDataset(read_manifests(manifests)[0], SIDE, flexip_config.clip.resolution * 2, seed=SEED,
                            loss_masks=True)
    items = [dataset.load(i, dataset.item_rng(i, i)) for i in range(16)]  # epoch 0, as the FeatureCache keeps it
    expected = [f for start in range(0, 16, 3) for f in encode_features(base, items[start:start + 3])]
    features = stored(tmp_path / "features", loss_masks=True)
    assert sorted(features) == list(range(16))
    for i, got in features.items():
        assert all(torch.equal(got["features"][name], expected[i][name]) for name in NAMES), i
        assert got["loss_mask"].dtype == torch.float32 and torch.equal(got["loss_mask"], items[i]["loss_mask"]), i
        assert got.get("gamma") == items[i].get("gamma"), i
    assert sum("gamma" in f for f in features.values()) == 2
    assert sum(not torch.equal(f["loss_mask"], torch.ones(SIDE, SIDE)) for f in features.values()) == 8

    trainer = make_trainer(tiny_config(tmp_path / "run", manifests, run={"max_steps": 2},
                                       data={"features": str(tmp_path / "features")}, loss={"subject_weight": 3.0}))
    forbid_encoding(trainer.base)
    assert trainer.train() == 2 and trainer.stream.loader.loss_masks


def test_a_feature_run_never_encodes_and_equals_a_run_whose_feature_cache_holds_the_features(data, feature_set,
                                                                                              tmp_path):
    # The same stream order (the feature set keeps the shards), the same per-item draws (keyed by
    # round and index), the same features: the losses and the weights agree to the bit.
    _, shards = data
    folder, _ = feature_set
    cached = make_trainer(shard_config(tmp_path / "cached", shards, 6, feature_cache=str(tmp_path / "cache")))
    for index, item in stored(folder).items():
        cached.cache.put(index, item["features"])
    streamed = make_trainer(shard_config(tmp_path / "streamed", shards, 6, features=str(folder)))
    for trainer in (cached, streamed):
        forbid_encoding(trainer.base)
        assert trainer.train() == 6
    assert cached.cache.misses == 0 and cached.cache.hits == 12
    assert losses(tmp_path / "cached") == losses(tmp_path / "streamed")
    assert_same_state(tmp_path / "cached", tmp_path / "streamed")


def test_a_feature_run_stopped_and_resumed_trains_as_the_unbroken_run(data, feature_set, tmp_path):
    # As test_shards' resume test: two workers, stopped after 3 batches (odd), so the resumed
    # loader must go on from the right worker.
    _, shards = data
    folder, _ = feature_set
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert make_trainer(shard_config(straight, shards, 5, features=str(folder))).train() == 5
    make_trainer(shard_config(interrupted, shards, 3, features=str(folder))).train()
    resumed = make_trainer(shard_config(interrupted, shards, 5, features=str(folder)))
    forbid_encoding(resumed.base)
    assert resumed.train() == 5
    assert losses(straight)[3:] == losses(interrupted)[3:]
    assert_same_state(straight, interrupted)


def test_features_of_other_data_or_settings_are_refused(data, feature_set, tmp_path):
    manifests, shards = data
    folder, _ = feature_set
    with pytest.raises(ValueError, match=r"\[data\] features: .* other data or settings \(resolution 64 there, 128 "
                                         r"here\); write this run's with python -m flexip_train features"):
        make_trainer(shard_config(tmp_path / "a", shards, features=str(folder), resolution=128))
    with pytest.raises(ValueError, match=r"manifests None there, \[.*images.jsonl"):  # not the data it was written for
        make_trainer(tiny_config(tmp_path / "b", manifests, data={"features": str(folder)}))
    with pytest.raises(ValueError, match=r"holds features, not samples: give it as \[data\] features"):
        make_trainer(shard_config(tmp_path / "c", folder))
    with pytest.raises(ValueError, match=r"holds samples, not features; write a feature set with python -m"):
        make_trainer(shard_config(tmp_path / "d", shards, features=str(shards)))
