"""The adapters' training data on disk (benchmarks/nano/data.py): captions, subject-only references and
manifests, the training variants' included."""
import dataclasses
import json
from pathlib import Path

import numpy as np

from benchmarks.nano import data, world

HIDDEN = set(world.PATTERNS) | set(world.MARKS)


def test_image_captions_leave_out_half_of_each_scene_attribute_and_never_name_the_pattern():
    pairs = [(s, c) for s in range(0, world.NUM_SUBJECTS, 3) for c in range(world.NUM_SCENES)]
    named = {"colour": [], "background": [], "position": [], "size": []}
    for subject_id, scene_id in pairs:
        subject, scene = world.Subject.from_id(subject_id), world.Scene.from_id(scene_id)
        words = data.image_caption(subject_id, scene_id).split()
        assert subject.shape in words and not HIDDEN & set(words) and set(words) <= set(world.VOCABULARY)
        for attribute, value in (("colour", subject.colour), ("background", scene.background),
                                 ("position", scene.position), ("size", scene.size)):
            named[attribute].append(value in words)
        assert data.image_caption(subject_id, scene_id) == " ".join(words)  # fixed per picture
    for attribute, flags in named.items():
        assert 0.45 < np.mean(flags) < 0.55, attribute
    assert np.corrcoef(named["background"], named["position"])[0, 1] < 0.1  # independent coins


def test_view_captions_name_the_whole_scene():
    for subject_id, scene_id in ((0, 0), (17, 35), (200, 11), (383, 20)):
        subject, scene = world.Subject.from_id(subject_id), world.Scene.from_id(scene_id)
        text = data.view_caption(subject_id, scene_id)
        assert text == world.caption(subject, scene, data.names_colour(subject_id, scene_id))
        assert {scene.background, scene.position, scene.size, subject.shape} <= set(text.split())


def test_training_data_holds_out_the_evaluation_subjects(tmp_path):
    from flexip_train.manifest import read_manifest
    images, multiview = data.write_training_data(tmp_path, views_per_subject=2, pairs_per_view=1, progress=False)
    train, held = world.split()
    image_samples, problems = read_manifest(images)
    assert not problems and len(image_samples) == 2 * len(train)
    view_samples, problems = read_manifest(multiview)
    assert not problems and len(view_samples) == 2 * len(train)
    subjects = {int(s.target.split("/")[-2]) for s in image_samples + view_samples}
    assert subjects == set(train) and not subjects & set(held)
    for sample in image_samples:
        assert sample.modality == "image" and sample.references == (sample.target,)
    for sample in view_samples:
        reference, target = sample.references[0], sample.target
        assert sample.modality == "multiview" and reference != target
        assert reference.split("/")[-2] == target.split("/")[-2]  # one subject's two views
        assert sample.caption == (tmp_path / "views" / target.split("/views/")[1]).with_suffix(".txt").read_text()
    # every picture's loss mask is its subject's exact mask, and the manifests name it for the target
    from PIL import Image
    renderer = world.Renderer()
    for sample in image_samples + view_samples:
        assert sample.loss_mask == sample.target[:-len(".png")] + ".loss.mask.png" and sample.mask is None
    for sample in image_samples[:3]:
        picture = np.asarray(Image.open(sample.target), dtype=np.float32) / 255
        mask = np.asarray(Image.open(sample.loss_mask), dtype=np.float32) / 255
        subject = int(sample.target.split("/")[-2])
        scene = next(c for c in range(world.NUM_SCENES)
                     if np.abs(renderer.render([subject], [c])[0].numpy() - picture).max() < 1 / 255)
        assert np.abs(mask - renderer.subject_mask([subject], [scene])[0].numpy()).max() < 1 / 255  # 8-bit


def test_subject_reference_keeps_the_subject_alone_centred_at_its_box():
    import torch
    from flexip_core.preprocess import BACKGROUND
    renderer = world.Renderer()
    subject, scene = world.Subject("square", "blue", "half", "white").id, world.Scene("grass", "left", "large").id
    picture, mask = renderer.render([subject], [scene])[0], renderer.subject_mask([subject], [scene])[0]
    for scale in (1.1, 1.5):
        out = data.subject_reference(picture, mask, scale)
        assert out.shape == picture.shape
        grey = (out - BACKGROUND).abs().amax(-1) < 1e-6
        ys, xs = torch.nonzero(~grey, as_tuple=True)
        # the subject fills about 1 / scale of the side, in the middle; the grass is gone
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1).item() / world.SIZE
        assert abs(extent - 1 / scale) < 0.1, (scale, extent)
        assert abs((ys.min() + ys.max()).item() / 2 - 15.5) <= 1.5 and abs((xs.min() + xs.max()).item() / 2 - 15.5) <= 1.5
        grass = torch.tensor(world.BACKGROUNDS["grass"]) / 255
        assert not ((out - grass).abs().amax(-1) < 0.05).any()


def test_variant_manifests(tmp_path):
    from flexip_train.manifest import read_manifest
    from benchmarks.nano.variants import VARIANTS
    images, multiview = data.write_training_data(tmp_path, views_per_subject=3, pairs_per_view=1, progress=False)
    assert data.variant_manifests(tmp_path, VARIANTS["paper"], tmp_path / "paper") == [images, multiview]
    index = json.loads((tmp_path / "index.json").read_text())
    conflict = data.variant_manifests(tmp_path, VARIANTS["conflict-subject"], tmp_path / "conflict")
    original, changed = read_manifest(images)[0], read_manifest(conflict[0])[0]
    assert len(original) == len(changed)
    for before, after in zip(original, changed):
        subject, scene = index[str(Path(before.target).relative_to(tmp_path))]
        other = [c for key, (s, c) in index.items() if key.startswith("views/") and s == subject and c != scene]
        assert after.target == before.target and after.loss_mask == before.loss_mask
        assert after.caption in {data.view_caption(subject, c) for c in other}  # another view's whole caption
        assert after.references == (before.target.replace("/images/", "/subjects/"),)
        assert Path(after.references[0]).is_file()
    views_before, views_after = read_manifest(multiview)[0], read_manifest(conflict[1])[0]
    for before, after in zip(views_before, views_after):
        assert after.caption == before.caption and after.target == before.target
        assert after.references == tuple(r.replace("/views/", "/subjects/") for r in before.references)


def test_recoloured_views_teach_the_colour_conflict_on_training_subjects_only(tmp_path):
    from PIL import Image
    from flexip_train.manifest import read_manifest
    from benchmarks.nano.variants import VARIANTS
    variant = VARIANTS["subject-recolour"]
    images, multiview = data.write_training_data(tmp_path, views_per_subject=3, pairs_per_view=1, progress=False)
    index = json.loads((tmp_path / "index.json").read_text())
    train = set(world.split()[0])
    plain = data.variant_manifests(tmp_path, VARIANTS["subject"], tmp_path / "subject")
    changed = data.variant_manifests(tmp_path, variant, tmp_path / "recolour")
    assert read_manifest(changed[0])[0] == read_manifest(plain[0])[0]  # image samples as (b)'s
    renderer, recoloured, naming = world.Renderer(), 0, 0
    for before, after in zip(read_manifest(plain[1])[0], read_manifest(changed[1])[0]):
        assert after.references == before.references and after.loss_mask == before.loss_mask
        subject, scene = index[str(Path(before.target).relative_to(tmp_path))]
        if not data.names_colour(subject, scene):
            assert after == before
            continue
        naming += 1
        if after.target == before.target:
            assert after == before
            continue
        recoloured += 1
        own, asked = world.Subject.from_id(subject), after.caption.split()[2]
        new = world.Subject(own.shape, asked, own.pattern, own.mark)
        assert asked != own.colour and new.id in train
        assert after.caption == world.caption(new, world.Scene.from_id(scene))
        picture = np.asarray(Image.open(after.target), dtype=np.float32) / 255
        assert np.abs(renderer.render([new.id], [scene])[0].numpy() - picture).max() < 1 / 255
        mask = np.asarray(Image.open(after.loss_mask), dtype=np.float32) / 255  # the same shape, scene: same mask
        assert np.abs(mask - renderer.subject_mask([new.id], [scene])[0].numpy()).max() < 1 / 255
    assert 0.4 < recoloured / naming < 0.6, (recoloured, naming)
    again = data.variant_manifests(tmp_path, variant, tmp_path / "again")  # fixed per pair
    assert [s.caption for s in read_manifest(again[1])[0]] == [s.caption for s in read_manifest(changed[1])[0]]
    assert all(s.gamma is None for s in read_manifest(changed[1])[0])  # the gate's gamma
    # subject-recolour-s: the same samples, the recoloured ones (only) at their own gamma 0
    alone = data.variant_manifests(tmp_path, VARIANTS["subject-recolour-s"], tmp_path / "alone")
    for with_gate, own in zip(read_manifest(changed[1])[0], read_manifest(alone[1])[0]):
        recoloured = "/recoloured/" in with_gate.target
        assert own.caption == with_gate.caption and own.gamma == (0.0 if recoloured else None)
    # subject-recolour-ends: the same, and every image sample at its own gamma 1
    ends = data.variant_manifests(tmp_path, VARIANTS["subject-recolour-ends"], tmp_path / "ends")
    for with_alone, own in zip(read_manifest(alone[1])[0], read_manifest(ends[1])[0]):  # recoloured under its own folder
        assert dataclasses.replace(own, target=own.target.replace("/ends/", "/alone/")) == with_alone
    for plain_image, own in zip(read_manifest(plain[0])[0], read_manifest(ends[0])[0]):
        assert own == dataclasses.replace(plain_image, gamma=1.0)
    # subject-recolour-decoupled: every sample but the recoloured ones at its own gamma 1
    decoupled = data.variant_manifests(tmp_path, VARIANTS["subject-recolour-decoupled"], tmp_path / "decoupled")
    assert read_manifest(decoupled[0])[0] == read_manifest(ends[0])[0]
    for with_alone, own in zip(read_manifest(alone[1])[0], read_manifest(decoupled[1])[0]):
        recoloured = "/recoloured/" in own.target
        expected = dataclasses.replace(with_alone, gamma=0.0 if recoloured else 1.0)
        assert dataclasses.replace(own, target=own.target.replace("/decoupled/", "/alone/")) == expected
    # subject-recolour-split: as decoupled, but each ordinary multi-view pair at 1 or 0 by a fixed coin
    split = data.variant_manifests(tmp_path, VARIANTS["subject-recolour-split"], tmp_path / "split")
    assert read_manifest(split[0])[0] == read_manifest(ends[0])[0]
    branches = []
    for built, with_alone, own in zip(read_manifest(multiview)[0], read_manifest(alone[1])[0], read_manifest(split[1])[0]):
        if "/recoloured/" in own.target:
            assert own.gamma == 0.0
            continue
        subject, scene = index[str(Path(own.target).relative_to(tmp_path))]
        reference = str(Path(built.references[0]).relative_to(tmp_path))  # the view the builders paired
        assert own == dataclasses.replace(with_alone, gamma=data.view_branch(subject, scene, reference))
        branches.append(own.gamma)
    assert 0.4 < sum(branches) / len(branches) < 0.6, sum(branches) / len(branches)
    # subject-recolour-both: every multi-view pair twice, as it is at gamma 1, and at gamma 0 as
    # subject-recolour-s has it (recoloured where it recolours it)
    both = data.variant_manifests(tmp_path, VARIANTS["subject-recolour-both"], tmp_path / "both")
    assert read_manifest(both[0])[0] == read_manifest(ends[0])[0]
    doubled, alone_views = read_manifest(both[1])[0], read_manifest(alone[1])[0]
    assert len(doubled) == 2 * len(alone_views)
    for with_alone, as_it_is, at_zero in zip(alone_views, doubled[0::2], doubled[1::2]):
        if "/recoloured/" not in with_alone.target:
            assert as_it_is == dataclasses.replace(with_alone, gamma=1.0)
        assert as_it_is.gamma == 1.0 and "/recoloured/" not in as_it_is.target
        assert as_it_is.references == with_alone.references
        assert dataclasses.replace(at_zero, target=at_zero.target.replace("/both/", "/alone/")) == (
            dataclasses.replace(with_alone, gamma=0.0))
