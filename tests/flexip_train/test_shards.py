"""Tar shards (flexip_train.shards, `python -m flexip_train shards`) and the shard stream
(flexip_train.stream): every manifest modality round-trips byte for byte and tensor for tensor,
the stream splits by rank and worker, shuffles, balances the kinds, and a run stopped and
resumed reads exactly the samples an unbroken run reads."""
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flexip_train.__main__ import main as flexip_train_main
from flexip_train.builders import images_manifest, multiview_manifest, videos_manifest
from flexip_train.dataset import SampleLoader
from flexip_train.manifest import Sample, read_manifest, sample_to_record, write_manifest
from flexip_train.media import list_frames
from flexip_train.shards import INDEX, iterate_shards, read_shard_sample
from flexip_train.stream import ShardStream

from tests.flexip_train.conftest import write_frame_folder, write_image, write_mask

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tiny_run import make_trainer, tiny_config, write_data  # noqa: E402

SIDE = 48


def shard_set(manifests, out, per_shard):
    assert flexip_train_main(["shards", *map(str, manifests), "--out", str(out), "--samples-per-shard",
                              str(per_shard), "--no-progress"]) == 0
    return json.loads((out / INDEX).read_text())


@pytest.fixture(scope="module")
def every_modality(tmp_path_factory, image_folder, video_folder, multiview_folder):
    """Manifests of the builders' folders (images with a mask, an MP4, an MKV, a frame folder,
    multi-view sets with a mask) plus the fields the builders never write: a loss mask, several
    references (with a sample's own gamma), a video with fixed frames and both masks; and one
    undecodable image line."""
    root = tmp_path_factory.mktemp("every_modality")
    manifests = []
    for name, build, (folder, _, _) in (("images", images_manifest, image_folder),
                                        ("videos", videos_manifest, video_folder),
                                        ("multiview", multiview_manifest, multiview_folder)):
        samples = [s for s in build(folder, progress=False)[0] if "cut_faststart" not in s.target]
        manifests.append(root / f"{name}.jsonl")
        write_manifest(samples, manifests[-1])
    extra = root / "extra"
    picture = write_image(extra / "toy.png", (40, 48), 7, caption=None)
    second = write_image(extra / "toy_side.jpg", (48, 40), 8, caption=None)
    write_mask(extra / "toy.loss.png", (40, 48))
    clip = write_frame_folder(extra / "clip", 8, caption=None)
    write_mask(extra / "frame.mask.png", (64, 64))
    write_mask(extra / "frame.loss.png", (64, 64))
    (extra / "broken.png").write_bytes(b"not a picture")
    samples = [Sample("image", (str(picture),), str(picture), "a toy with a loss mask", loss_mask=str(extra / "toy.loss.png")),
               Sample("multiview", (str(picture), str(second)), str(second), "two references of a toy", gamma=0.0),
               Sample("video", (str(clip),), str(clip), "a clip with fixed frames", mask=str(extra / "frame.mask.png"),
                      frames=(1, 6), loss_mask=str(extra / "frame.loss.png")),
               Sample("image", (str(extra / "broken.png"),), str(extra / "broken.png"), "an undecodable picture")]
    manifests.append(root / "extra.jsonl")
    write_manifest(samples, manifests[-1])
    return manifests


def test_shards_round_trip_every_manifest_modality(every_modality, tmp_path, capsys):
    index = shard_set(every_modality, tmp_path / "shards", per_shard=3)
    out = capsys.readouterr().out
    assert "1 skipped" in out and "unreadable image" in out and "broken.png" in out, out
    originals = {}
    for manifest in every_modality:
        base = str(manifest.resolve().parent)
        for sample in read_manifest(manifest)[0]:
            if "broken" not in sample.target:
                originals[json.dumps(sample_to_record(sample, base), sort_keys=True)] = sample
    assert index["samples"] == len(originals) == sum(index["kinds"].values())
    assert {s.modality for s in originals.values()} == {"image", "video", "multiview"}
    assert any(s.frames for s in originals.values()) and any(Path(s.target).is_dir() for s in originals.values())
    assert index["loss_masks"] == 2
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert [s.name for s in shards] == sorted(s["name"] for s in index["shards"])
    assert all(s["samples"] <= 3 for s in index["shards"])

    original_loader = SampleLoader(SIDE, SIDE, loss_masks=True)
    shard_loader = SampleLoader(SIDE, SIDE, loss_masks=True)
    seen = []
    for raw in iterate_shards(shards):
        sample, files, meta = read_shard_sample(raw)
        original = originals[json.dumps(meta["source"], sort_keys=True)]
        seen.append(meta["index"])
        assert (sample.modality, sample.caption, sample.frames, sample.gamma) == \
            (original.modality, original.caption, original.frames, original.gamma)
        assert raw["__url__"].split("/")[-1].startswith("variant" if original.is_variant else "invariant")
        for shard_path, path in zip((*sample.references, sample.target, sample.mask, sample.loss_mask),
                                    (*original.references, original.target, original.mask, original.loss_mask)):
            assert (shard_path is None) == (path is None)
            if path is None:
                continue
            if Path(path).is_dir():  # a frame folder: every frame, in order
                assert files[shard_path] == [f.read_bytes() for f in list_frames(path)]
            else:
                assert files[shard_path] == Path(path).read_bytes()
        # and training sees the very same tensors from either (random frame pairs and augmentation included)
        a = original_loader.load_sample(original, np.random.default_rng(5))
        b = shard_loader.load_sample(sample, np.random.default_rng(5), files, meta["frame_total"])
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a), original
    assert sorted(seen) == list(range(len(originals)))


def test_writing_refuses_a_used_folder_and_reports_an_empty_result(every_modality, tmp_path):
    shard_set(every_modality[:1], tmp_path / "shards", per_shard=100)
    with pytest.raises(SystemExit, match="already holds a shard set"):
        flexip_train_main(["shards", str(every_modality[0]), "--out", str(tmp_path / "shards")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"modality": "image", "references": ["gone.png"], "caption": "a missing file"}\n')
    assert flexip_train_main(["shards", str(empty), "--out", str(tmp_path / "none"), "--no-progress"]) == 1


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """The tiny run's 8 image and 8 multi-view samples as shards of 2: 4 shards of each kind."""
    root = tmp_path_factory.mktemp("tiny_shards")
    manifests = write_data(root / "data")
    shard_set(manifests, root / "shards", per_shard=2)
    return manifests, root / "shards"


def stream_of(folder, **options):
    return ShardStream(folder, SampleLoader(32, 32), **{"seed": 4, "buffer": 3, **options})


def test_each_round_deals_every_shard_to_exactly_one_rank_and_worker(tiny_shards):
    _, folder = tiny_shards
    streams = [stream_of(folder, rank=rank, world=2, workers=2) for rank in range(2)]
    for kind in ("invariant", "variant"):
        for round_ in range(3):
            dealt = [name for s in streams for stream in range(4) if stream % 2 == s.rank
                     for name in s.round_shards(kind, stream, round_)]
            assert sorted(dealt) == sorted(streams[0].shards[kind]), (kind, round_)
        assert streams[0].round_shards(kind, 0, 0) != streams[0].round_shards(kind, 0, 1) or \
            streams[0].round_shards(kind, 0, 1) != streams[0].round_shards(kind, 0, 2)
    with pytest.raises(ValueError, match="4 invariant shards for 3 processes x 2 workers"):
        stream_of(folder, world=3, workers=2)


def test_a_stream_shuffles_within_its_buffer_and_serves_the_kinds_one_to_one(tiny_shards):
    _, folder = tiny_shards
    stream = stream_of(folder)  # one process, no workers: one stream over all 8 shards
    items = [item for item, _ in zip(stream, range(32))]  # two rounds of each kind
    kinds = [bool(item["is_variant"]) for item in items]
    assert all(kinds[i] != kinds[i + 1] for i in range(0, 32, 2))  # each pair: one of each
    for round_ in (0, 1):
        indices = [item["index"] for item in items if item["key"][0] == round_]
        assert sorted(indices) == list(range(16))  # a round serves every sample once
    first = [item["index"] for item in items if item["key"][0] == 0 and not item["is_variant"]]
    second = [item["index"] for item in items if item["key"][0] == 1 and not item["is_variant"]]
    assert first != second  # another shard order and buffer shuffle each round
    assert [item["cursor"]["served"] for item in items] == list(range(1, 33))
    again = [item["index"] for item, _ in zip(stream_of(folder), range(32))]
    assert again == [item["index"] for item in items]  # deterministic for the seed


def test_a_stream_restarted_at_a_cursor_serves_what_followed(tiny_shards):
    _, folder = tiny_shards
    straight = [item for item, _ in zip(stream_of(folder), range(24))]
    for stop in (5, 11, 16):
        stream = stream_of(folder)
        stream.load_state_dict(stream.state_dict(stop, {0: straight[stop - 1]["cursor"]}))
        rest = [item for item, _ in zip(stream, range(24 - stop))]
        assert [i["key"] for i in rest] == [i["key"] for i in straight[stop:]]
        assert all(torch.equal(a["reference"], b["reference"]) for a, b in zip(rest, straight[stop:]))
    with pytest.raises(ValueError, match="workers 1 vs 2"):
        stream_of(folder, workers=2).load_state_dict(stream_of(folder).state_dict(1, {}))


def shard_config(run_dir, folder, steps, **data):
    return tiny_config(run_dir, [], run={"max_steps": steps},
                       data={"shards": str(folder), "num_workers": 2, "shuffle_buffer": 3, **data})


def step_keys(trainer, data_state, steps):
    order = []
    for (_, micro), _ in zip(trainer.steps(data_state), range(steps)):
        order.append([key for _, keys in micro for key in keys])
    return order


def test_a_run_stopped_and_resumed_reads_the_samples_of_an_unbroken_run(tiny_shards, tmp_path):
    # Two DataLoader workers, so a batch comes from one of two streams in turn: stopping after 3
    # batches (odd) checks that the resumed loader's turn goes on from the right worker; the two
    # steps after it come one from each worker.
    _, folder = tiny_shards
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    unbroken_order = step_keys(make_trainer(shard_config(tmp_path / "probe", folder, 5)), None, 5)
    assert len({key for step in unbroken_order for key in step}) == 10  # no sample twice in 5 steps of 2
    assert make_trainer(shard_config(straight, folder, 5)).train() == 5
    make_trainer(shard_config(interrupted, folder, 3)).train()
    resumed = make_trainer(shard_config(interrupted, folder, 5))
    data_state = resumed.resume()
    assert data_state["batches"] == 3 and set(data_state["cursors"]) == {"0", "1"}
    assert step_keys(resumed, data_state, 2) == unbroken_order[3:]
    assert make_trainer(shard_config(interrupted, folder, 5)).train() == 5
    a, b = (load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")
            for run in (straight, interrupted))
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_a_shard_run_exports_the_shard_sets_facts(tiny_shards, tmp_path):
    _, folder = tiny_shards
    trainer = make_trainer(shard_config(tmp_path, folder, 1, num_workers=0))
    trainer.train()
    with safe_open(str(trainer.export()), "pt") as f:
        facts = json.loads(f.metadata()["training"])
    assert (facts["samples"], facts["variant_samples"], facts["loss_masks"]) == (16, 8, 0)
    counts = Counter(bool(item["is_variant"]) for item, _ in zip(trainer.stream, range(8)))
    assert counts == {False: 4, True: 4}
