"""The dataset (tensors, light augmentation, frame pairs, bad samples substituted and reported)
and the 1:1 sampler (balance, determinism, DDP shares, exact resume)."""
import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from flexip_core.config import SD15
from flexip_core.preprocess import preprocess_reference
from flexip_train.builders import images_manifest, multiview_manifest, videos_manifest
from flexip_train.dataset import BalancedSampler, FlexIPDataset, collate, draw_augmentation, jitter_colour
from flexip_train.manifest import Sample

from tests.flexip_train.conftest import cut_in_half, level_to_frame, write_image, write_mask, write_video

SIDE = 48


@pytest.fixture(scope="module")
def samples(image_folder, video_folder, multiview_folder):
    """Every usable sample of the three generated folders (the builders' output)."""
    found = []
    for build, (root, _, _) in ((images_manifest, image_folder), (videos_manifest, video_folder),
                                (multiview_manifest, multiview_folder)):
        found += build(root, progress=False)[0]
    return [s for s in found if "cut_faststart" not in s.target]  # that one is for the bad-sample tests


def dataset_of(samples, **options):
    return FlexIPDataset(samples, **{"resolution": SIDE, "reference_size": SIDE, "seed": 3, **options})


def frame_of(image):
    """The frame index a decoded test-video frame shows (its lower half is flat grey)."""
    return level_to_frame(float(image[SIDE // 2:, :, 0].mean()) * 255)


def test_items_shapes_ranges_and_types(samples):
    data = FlexIPDataset(samples, resolution=40, reference_size=56, seed=0)
    kinds = set()
    for index in range(len(data)):
        item = data[index]
        assert item["reference"].shape == (1, 56, 56, 3) and item["reference"].dtype == torch.float32
        assert item["reference_mask"].shape == (1, 56, 56) and item["reference_mask"].dtype == torch.float32
        assert item["target"].shape == (40, 40, 3) and item["target"].dtype == torch.float32
        for name in ("reference", "reference_mask", "target"):
            assert 0.0 <= item[name].min() and item[name].max() <= 1.0
        assert item["caption"] == samples[index].caption and item["is_variant"] == samples[index].is_variant
        assert item["index"] == item["requested_index"] == index and item["skipped"] == []
        kinds.add(samples[index].modality)
        # the encoders' preprocessing takes the reference and its mask as they are
        encoded = preprocess_reference(item["reference"], SD15.dino, mask=item["reference_mask"])
        assert encoded.shape == (1, 3, 224, 224)
    assert kinds == {"image", "video", "multiview"}


def test_same_seed_epoch_and_index_give_the_same_item_another_epoch_another(samples):
    first, again = dataset_of(samples), dataset_of(samples)
    for index in range(len(samples)):
        a, b = first[index], again[index]
        assert all(torch.equal(a[k], b[k]) for k in ("reference", "reference_mask", "target"))
    image = next(i for i, s in enumerate(samples) if s.modality == "image")
    video = next(i for i, s in enumerate(samples) if s.modality == "video" and s.target.endswith(".mp4"))
    seen, clean_target = {}, first[image]["target"]
    for epoch in range(4):
        first.set_epoch(epoch)
        seen[epoch] = first[image]["reference"], first[video]["reference"][0], first[video]["target"]
        assert torch.equal(first[image]["target"], clean_target)  # the target is never augmented
    assert not any(torch.equal(seen[0][0], seen[e][0]) for e in (1, 2, 3))  # a new augmentation each epoch
    pairs = {(frame_of(ref), frame_of(tgt)) for ref, tgt in (seen[e][1:] for e in range(4))}
    assert len(pairs) > 1  # a new frame pair
    other_seed = dataset_of(samples, seed=4)
    assert not torch.equal(other_seed[image]["reference"], dataset_of(samples)[image]["reference"])


def test_image_reference_is_a_light_augmentation_of_the_clean_target(samples):
    images = [s for s in samples if s.modality == "image"]
    data = dataset_of(images)
    for epoch in range(5):
        data.set_epoch(epoch)
        for index in range(len(images)):
            item = data[index]
            difference = (item["reference"][0] - item["target"]).abs().mean().item()
            assert 0.0 < difference < 0.12, (epoch, index, difference)
    clean = dataset_of(images, augment=False)
    for index in range(len(images)):
        item = clean[index]  # same side, no augmentation: the reference is the target's pixels
        assert torch.equal(item["reference"][0], item["target"])


def test_colour_jitter_and_crop_draws_against_reference_formulas():
    image = torch.rand(5, 7, 3, dtype=torch.float64) * 0.8
    brightness, contrast, saturation = 1.07, 0.93, 1.04
    x = image.numpy() * brightness
    x = (x - x.mean()) * contrast + x.mean()
    grey = x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114
    expected = np.clip((x - grey) * saturation + grey, 0, 1)
    jittered = jitter_colour(image, brightness, contrast, saturation)
    assert np.allclose(jittered.numpy(), expected, atol=1e-12, rtol=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        (left, top, right, bottom), flip, factors = draw_augmentation(rng, 90, 60)
        side_x, side_y = (right - left) * 90, (bottom - top) * 60
        assert abs(side_x - side_y) < 1e-9 and 0.8 * 60 - 1e-9 <= side_x <= 60 + 1e-9  # a square, 80-100%
        assert 0 <= left and right <= 1 and 0 <= top and bottom <= 1
        assert all(0.9 <= f <= 1.1 for f in factors)


def test_reference_mask_follows_the_reference_crop_and_flip(tmp_path):
    # the picture is the mask itself (white subject on the left half), so the augmented
    # reference and its mask must still agree pixel by pixel (jitter changes levels by <= 10%)
    picture = tmp_path / "half.png"
    write_mask(picture, (60, 50))
    write_mask(tmp_path / "half.mask.png", (60, 50))
    sample = Sample("image", (str(picture),), str(picture), "half white", mask=str(tmp_path / "half.mask.png"))
    data = FlexIPDataset([sample], resolution=32, reference_size=32, seed=1)
    flipped = 0
    for epoch in range(8):
        data.set_epoch(epoch)
        item = data[0]
        subject, bright = item["reference_mask"][0] > 0.5, item["reference"][0, ..., 0] > 0.5
        assert (subject == bright).float().mean() > 0.95
        flipped += bool(subject[:, -1].all())  # the white half on the right: flipped
    assert 0 < flipped < 8
    assert torch.equal(FlexIPDataset([Sample("image", (str(picture),), str(picture), "c")], 32, 32)[0]
                       ["reference_mask"], torch.ones(1, 32, 32))


def stripes(path, size, white_columns):
    """A black picture (RGB) or mask (L, by the name) with white columns."""
    pixels = np.zeros((size[1], size[0]), np.uint8)
    pixels[:, white_columns] = 255
    Image.fromarray(pixels).convert("L" if path.name.endswith(".mask.png") else "RGB").save(path)
    return path


def test_loss_mask_is_cropped_as_the_target(tmp_path):
    # 60 x 40 pictures: the target is the central 40 x 40 (columns 10-49), loaded at 40 px, so the
    # crop is exact. White columns 0-9 lie outside it and 10-19 inside: a mask cropped otherwise
    # (squashed whole, or from the left) differs. Reference augmentation never moves it.
    view = stripes(tmp_path / "view.png", (60, 40), slice(0, 20))
    mask = stripes(tmp_path / "view.loss.mask.png", (60, 40), slice(0, 20))
    other = stripes(tmp_path / "other.png", (60, 40), slice(40, 60))
    other_mask = stripes(tmp_path / "other.loss.mask.png", (60, 40), slice(40, 60))
    expected = torch.zeros(40, 40)
    expected[:, :10] = 1
    samples = [Sample("image", (str(view),), str(view), "c", loss_mask=str(mask)),
               Sample("multiview", (str(other),), str(view), "c", loss_mask=str(mask)),
               Sample("multiview", (str(view),), str(other), "c", loss_mask=str(other_mask)),
               Sample("image", (str(other),), str(other), "no mask")]
    data = FlexIPDataset(samples, resolution=40, reference_size=32, seed=0, loss_masks=True)
    for epoch in range(3):
        data.set_epoch(epoch)
        for index in (0, 1):
            item = data[index]
            assert torch.equal(item["loss_mask"], expected) and torch.equal(item["target"][..., 0], expected)
    assert torch.equal(data[2]["loss_mask"], expected.flip(1))  # the target's mask, not the reference's
    assert torch.equal(data[3]["loss_mask"], torch.ones(40, 40))
    batch = collate([data[0], data[3]])
    assert torch.equal(batch["loss_mask"], torch.stack([expected, torch.ones(40, 40)]))
    # without loss_masks the items are as before: no mask is read
    plain = FlexIPDataset(samples, resolution=40, reference_size=32, seed=0)
    assert "loss_mask" not in plain[0] and "loss_mask" not in collate([plain[0], plain[3]])
    other_mask.unlink()
    assert "loss_mask" not in plain[2]
    # a loss mask of the wrong size is a bad sample, substituted and reported
    wrong = stripes(tmp_path / "wrong.loss.mask.png", (20, 20), slice(0, 5))
    bad = FlexIPDataset([Sample("image", (str(view),), str(view), "c", loss_mask=str(wrong))] + samples[3:],
                        resolution=40, reference_size=32, loss_masks=True)[0]
    assert bad["index"] == 1 and bad["skipped"][0][0] == str(wrong)
    assert bad["skipped"][0][1].startswith("bad loss mask: the mask is 20x20 but its image is 60x40")


def test_video_pairs_keep_their_gap_and_fixed_frames_are_used(video_folder):
    walk = str(video_folder[1]["mp4"])
    data = FlexIPDataset([Sample("video", (walk,), walk, "a walk")], SIDE, SIDE, min_gap=3, max_gap=5)
    gaps, orders = [], set()
    for epoch in range(12):
        data.set_epoch(epoch)
        item = data[0]
        reference, target = frame_of(item["reference"][0]), frame_of(item["target"])
        gaps.append(abs(target - reference))
        orders.add(reference < target)
        assert 0 <= min(reference, target) and max(reference, target) <= 11
    assert set(gaps) <= {3, 4, 5} and len(set(gaps)) > 1 and orders == {True, False}
    fixed = FlexIPDataset([Sample("video", (walk,), walk, "a walk", frames=(9, 2))], SIDE, SIDE)[0]
    assert (frame_of(fixed["reference"][0]), frame_of(fixed["target"])) == (9, 2)
    folder = str(video_folder[1]["frames"])
    in_folder = FlexIPDataset([Sample("video", (folder,), folder, "frames", frames=(10, 1))], SIDE, SIDE)[0]
    assert (frame_of(in_folder["reference"][0]), frame_of(in_folder["target"])) == (10, 1)


def test_bad_samples_are_substituted_by_the_next_of_their_kind_and_reported(tmp_path, video_folder):
    good_a, good_b = write_image(tmp_path / "a.png", seed=1), write_image(tmp_path / "b.png", seed=2)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    truncated = cut_in_half(write_image(tmp_path / "truncated.png", (64, 64), seed=3))
    masked = write_image(tmp_path / "masked.png", (48, 40), seed=4)
    wrong_mask = write_mask(tmp_path / "masked.mask.png", (10, 10))
    walk = str(video_folder[1]["mp4"])
    cut = str(video_folder[1]["cut_faststart"])  # its header promises 12 frames; fewer decode
    short = str(write_video(tmp_path / "two.mp4", 2))
    image = lambda p, **kw: Sample("image", (str(p),), str(p), "c", **kw)  # noqa: E731
    video = lambda p, **kw: Sample("video", (p,), p, "v", **kw)  # noqa: E731
    samples = [image(corrupt), video(cut, frames=(0, 10)), image(good_a), video(short), image(truncated),
               video(walk), image(masked, mask=str(wrong_mask)), image(good_b)]
    data = FlexIPDataset(samples, SIDE, SIDE, seed=0, min_gap=2, max_gap=4)
    expect = {0: (2, [str(corrupt)]), 4: (7, [str(truncated), str(masked.with_suffix(".mask.png"))]),
              6: (7, [str(wrong_mask)]), 1: (5, [cut, short]), 3: (5, [short])}
    for index, (loaded, paths) in expect.items():
        item = data[index]
        assert item["index"] == loaded and item["requested_index"] == index
        assert item["is_variant"] == samples[index].is_variant
        assert [path for path, _ in item["skipped"]] == paths
        again = data[index]
        assert torch.equal(item["reference"], again["reference"]) and item["skipped"] == again["skipped"]
    reasons = dict(data[1]["skipped"])
    assert re.fullmatch(r"too few frames: the video ends after [1-9] frames?, frame 10 asked for", reasons[cut])
    assert reasons[short] == "too few frames: 2, a pair 2 apart needs 3"
    assert dict(data[0]["skipped"])[str(corrupt)].startswith("unreadable image: cannot identify image file")
    assert "the mask is 10x10 but its image is 48x40" in dict(data[6]["skipped"])[str(wrong_mask)]
    # the last image wraps around to the first good one
    assert data[7]["index"] == 7 and FlexIPDataset(samples[:1] + samples[2:3], SIDE, SIDE)[0]["index"] == 1


def test_a_kind_without_one_good_sample_is_a_clear_error(tmp_path, video_folder):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    walk = str(video_folder[1]["mp4"])
    data = FlexIPDataset([Sample("image", (str(corrupt),), str(corrupt), "c"), Sample("video", (walk,), walk, "v")],
                         SIDE, SIDE)
    assert data[1]["skipped"] == []
    with pytest.raises(RuntimeError, match=r"none of the 1 invariant \(image\) samples loads") as error:
        data[0]
    assert str(corrupt) in str(error.value)


def test_collate_and_dataloader_workers_give_the_same_batches(samples):
    data = dataset_of(samples)
    sampler = BalancedSampler(data, seed=5)
    data.set_epoch(2)
    sampler.set_epoch(2)
    single = list(DataLoader(data, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=0))
    workers = list(DataLoader(data, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=2))
    batch = single[0]
    assert batch["reference"].shape == (4, 1, SIDE, SIDE, 3) and batch["reference_mask"].shape == (4, 1, SIDE, SIDE)
    assert batch["target"].shape == (4, SIDE, SIDE, 3) and len(batch["caption"]) == 4
    assert batch["is_variant"].dtype == torch.bool and batch["is_variant"].sum() == 2  # pairs: even batches balance
    assert batch["index"].tolist() == list(sampler)[:4] and batch["skipped"] == []
    for a, b in zip(single, workers, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("reference", "reference_mask", "target", "index"))
    two_references = dict(data[0], reference=torch.zeros(2, SIDE, SIDE, 3))
    with pytest.raises(ValueError, match=r"mixes samples with \[1, 2\] references"):
        collate([data[0], two_references])


def kinds(count_invariant, count_variant):
    image = Sample("image", ("a.png",), "a.png", "c")
    view = Sample("multiview", ("a.png",), "b.png", "c")
    return [image] * count_invariant + [view] * count_variant


def test_sampler_draws_the_two_kinds_one_to_one():
    samples = kinds(3, 11)
    sampler = BalancedSampler(samples, seed=0)
    assert sampler.warning is None and len(sampler) == 22
    draws = Counter()
    for epoch in range(50):
        sampler.set_epoch(epoch)
        order = list(sampler)
        is_variant = [samples[i].is_variant for i in order]
        assert sum(is_variant) == len(order) // 2
        assert all(a != b for a, b in zip(is_variant[0::2], is_variant[1::2]))  # every pair is one of each
        assert set(is_variant[0::2]) == {True, False}  # which kind comes first is drawn
        assert set(i for i in order if i >= 3) == set(range(3, 14))  # every variant sample, once each
        counts = Counter(i for i in order if i < 3)
        assert max(counts.values()) - min(counts.values()) <= 1  # the smaller pool cycled evenly
        draws.update(is_variant)
    assert draws[True] == draws[False] == 50 * 11


def test_sampler_is_deterministic_per_seed_and_epoch():
    samples = kinds(7, 5)
    one, two = BalancedSampler(samples, seed=1), BalancedSampler(samples, seed=1)
    assert list(one) == list(two)
    orders = {tuple(one.epoch_order(epoch)) for epoch in range(5)}
    assert len(orders) == 5 and tuple(BalancedSampler(samples, seed=2)) != tuple(one)


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_ddp_shares_are_equal_disjoint_and_cover_the_epoch(replicas):
    samples = kinds(5, 8)
    ranks = [BalancedSampler(samples, seed=7, num_replicas=replicas, rank=r) for r in range(replicas)]
    for sampler in ranks:
        sampler.set_epoch(3)
    shares = [list(s) for s in ranks]
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == len(ranks[0])
    interleaved = [share[i] for i in range(len(shares[0])) for share in shares]
    assert interleaved == ranks[0].epoch_order(3)  # every position of one epoch exactly once, in turn
    assert set(sum(shares, [])) == set(range(13))
    with pytest.raises(ValueError, match="rank 2 of 2"):
        BalancedSampler(samples, num_replicas=2, rank=2)


def test_resume_mid_epoch_gives_exactly_the_rest():
    samples = kinds(6, 9)
    sampler = BalancedSampler(samples, seed=11, num_replicas=2, rank=1)
    sampler.set_epoch(4)
    full = list(sampler)
    state = json.loads(json.dumps(sampler.state_dict(consumed=5)))
    resumed = BalancedSampler(samples, seed=11, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    assert list(resumed) == full[5:] and len(resumed) == len(full) - 5
    again = BalancedSampler(samples, seed=11, num_replicas=2, rank=1)
    again.load_state_dict(resumed.state_dict(consumed=3))  # a second resume counts from the first
    assert list(again) == full[8:]
    again.set_epoch(5)
    assert list(again) == again.share(5)
    with pytest.raises(ValueError, match="seed 11 vs 12"):
        BalancedSampler(samples, seed=12, num_replicas=2, rank=1).load_state_dict(state)
    with pytest.raises(ValueError, match="outside"):
        sampler.state_dict(consumed=len(full) + 1)


def test_one_kind_alone_is_drawn_with_a_warning():
    only_images = BalancedSampler(kinds(5, 0), seed=0, num_replicas=2, rank=0)
    assert "only invariant (image) samples" in only_images.warning
    order = only_images.epoch_order(0)
    assert len(order) == 6 and set(order) == set(range(5))  # one more drawn, so the two ranks share evenly
    assert all(not kinds(5, 0)[i].is_variant for i in order) and len(only_images) == 3
    only_variant = BalancedSampler(kinds(0, 4), seed=0)
    assert "only variant (video, multi-view) samples" in only_variant.warning and sorted(only_variant) == [0, 1, 2, 3]
