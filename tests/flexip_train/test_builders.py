"""Manifest builders on generated folders of images, videos (written with PyAV) and multi-view
sets, bad samples included; the command line."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from flexip_train import build_manifest
from flexip_train.builders import images_manifest, multiview_manifest, read_caption, videos_manifest
from flexip_train.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]


def reasons(problems):
    return Counter(p.reason for p in problems)


def paths_by_reason(problems):
    found = {}
    for p in problems:
        found.setdefault(p.reason, set()).add(p.path)
    return found


def as_strings(paths):
    return {str(p) for p in paths}


def test_images(image_folder):
    root, good, bad = image_folder
    samples, problems = images_manifest(root, progress=False)
    assert {s.target for s in samples} == as_strings(good.values())
    assert all(s.modality == "image" and s.references == (s.target,) and not s.is_variant for s in samples)
    by_target = {Path(s.target).stem: s for s in samples}
    assert by_target["cat"].caption == "a grey cat" and by_target["bird"].caption == "a small bird"
    assert by_target["cat"].mask == str(root / "cat.mask.png") and by_target["dog"].mask is None
    assert reasons(problems) == {"missing caption": 2, "unreadable image": 2, "bad mask": 1}
    assert paths_by_reason(problems) == {reason: as_strings(paths) for reason, paths in bad.items()}
    assert "48x40" in next(p.detail for p in problems if p.reason == "bad mask")


def test_videos(video_folder):
    root, good, bad = video_folder
    samples, problems = videos_manifest(root, min_gap=4, progress=False)
    assert {s.target for s in samples} == as_strings(good.values())
    assert all(s.modality == "video" and s.references == (s.target,) and s.frames is None and s.is_variant
               for s in samples)
    assert {s.caption for s in samples} == {"a walk", "a turn", "a test frame folder", "cut, header first"}
    assert reasons(problems) == {"too few frames": 3, "unreadable video": 1, "missing caption": 2}
    assert paths_by_reason(problems) == {reason: as_strings(paths) for reason, paths in bad.items()}
    details = {Path(p.path).name: p.detail for p in problems}
    assert details["one_frame.mp4"] == "1 frame, needs 5 (min gap 4)"
    assert details["three_frames.mp4"] == "3 frames, needs 5 (min gap 4)"


def test_min_gap_sets_the_shortest_video(video_folder):
    root, _, _ = video_folder
    samples, problems = videos_manifest(root, min_gap=1, progress=False)
    assert str(root / "three_frames.mp4") in {s.target for s in samples}
    assert paths_by_reason(problems)["too few frames"] == as_strings([root / "one_frame.mp4", root / "frames_one"])


def test_verify_finds_a_video_cut_short_behind_a_complete_header(video_folder):
    root, good, _ = video_folder
    samples, problems = videos_manifest(root, verify=True, progress=False)
    assert str(good["cut_faststart"]) not in {s.target for s in samples}
    cut = next(p for p in problems if p.path == str(good["cut_faststart"]))
    assert cut.reason == "unreadable video" and "header says 12 frames" in cut.detail
    assert {s.target for s in samples} == as_strings([good["mp4"], good["mkv"], good["frames"]])


def test_multiview(multiview_folder):
    root, good, bad = multiview_folder
    samples, problems = multiview_manifest(root, progress=False)
    pairs = {(Path(s.references[0]).relative_to(root).as_posix(), Path(s.target).relative_to(root).as_posix())
             for s in samples}
    assert pairs == {("mug/0.png", "mug/1.png"), ("mug/1.png", "mug/2.png"), ("mug/2.png", "mug/0.png"),
                     ("shoes/shoe/a.png", "shoes/shoe/b.jpg"), ("shoes/shoe/b.jpg", "shoes/shoe/a.png"),
                     ("partial/0.png", "partial/1.png"), ("partial/1.png", "partial/0.png")}
    assert len(samples) == len(pairs) and all(s.modality == "multiview" and s.is_variant for s in samples)
    captions = {(Path(s.target).parent.name, Path(s.target).name): s.caption for s in samples}
    assert captions[("mug", "2.png")] == "a red mug"               # the object's caption.txt
    assert captions[("shoe", "a.png")] == "a shoe, view a"         # the target view's own caption
    assert captions[("partial", "0.png")] == "view 0"
    masks = {Path(s.references[0]).name: s.mask for s in samples if Path(s.references[0]).parent.name == "mug"}
    assert masks == {"0.png": None, "1.png": str(root / "mug" / "1.mask.png"), "2.png": None}
    assert reasons(problems) == {"missing caption": 1, "unreadable image": 1, "too few views": 2,
                                 "not in an object folder": 1}
    assert paths_by_reason(problems) == {reason: as_strings(paths) for reason, paths in bad.items()}


def test_loss_masks_go_with_the_target_and_are_never_pictures(tmp_path):
    from tests.flexip_train.conftest import write_image, write_mask
    images, views = tmp_path / "images", tmp_path / "views"
    write_image(images / "cat.png", (48, 40), 1, "a cat")
    write_mask(images / "cat.loss.mask.png", (48, 40))
    write_image(images / "dog.png", (48, 40), 2, "a dog")
    write_mask(images / "dog.loss.mask.png", (20, 20))
    write_image(images / "bird.png", (48, 40), 3, "a bird")
    samples, problems = images_manifest(images, progress=False)
    assert [(Path(s.target).name, s.loss_mask, s.mask) for s in samples] == [
        ("bird.png", None, None), ("cat.png", str(images / "cat.loss.mask.png"), None)]
    assert [(p.path, p.reason) for p in problems] == [(str(images / "dog.loss.mask.png"), "bad loss mask")]
    assert "48x40" in problems[0].detail
    for i in range(3):
        write_image(views / "mug" / f"{i}.png", (40, 40), 10 + i, caption="a mug")
    write_mask(views / "mug" / "1.loss.mask.png", (40, 40))
    write_mask(views / "mug" / "2.mask.png", (40, 40))
    samples, problems = multiview_manifest(views, progress=False)
    assert not problems
    pairs = {(Path(s.references[0]).name, Path(s.target).name): (s.mask, s.loss_mask) for s in samples}
    assert pairs == {("0.png", "1.png"): (None, str(views / "mug" / "1.loss.mask.png")),
                     ("1.png", "2.png"): (None, None),
                     ("2.png", "0.png"): (str(views / "mug" / "2.mask.png"), None)}


def test_pairs_per_view(multiview_folder):
    root, _, _ = multiview_folder
    samples, _ = multiview_manifest(root, pairs_per_view=5, progress=False)
    mug = [(Path(s.references[0]).name, Path(s.target).name) for s in samples if Path(s.target).parent.name == "mug"]
    assert sorted(mug) == sorted((f"{a}.png", f"{b}.png") for a in range(3) for b in range(3) if a != b)
    with pytest.raises(ValueError, match="pairs_per_view"):
        multiview_manifest(root, pairs_per_view=0, progress=False)


def test_sidecar_caption(tmp_path):
    assert read_caption(tmp_path / "missing.txt") is None
    (tmp_path / "blank.txt").write_text(" \n\t")
    assert read_caption(tmp_path / "blank.txt") is None
    (tmp_path / "c.txt").write_text("  a cat, é \n", encoding="utf-8")
    assert read_caption(tmp_path / "c.txt") == "a cat, é"


def test_command_writes_and_appends_the_manifest(image_folder, video_folder, tmp_path, capsys):
    out = tmp_path / "data" / "manifest.jsonl"
    assert build_manifest.main(["images", str(image_folder[0]), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 image samples; 5 skipped:" in printed and "  unreadable image: 2" in printed
    assert str(image_folder[0] / "corrupt.png") in printed and "wrote 3 samples" in printed
    assert build_manifest.main(["videos", str(video_folder[0]), "--out", str(out), "--append", "--no-progress",
                                "--min-gap", "1"]) == 0
    assert "appended 5 samples" in capsys.readouterr().out
    # the same folder again: nothing is added twice
    assert build_manifest.main(["videos", str(video_folder[0]), "--out", str(out), "--append", "--no-progress",
                                "--min-gap", "1"]) == 0
    assert "appended 0 samples" in capsys.readouterr().out
    samples, problems = read_manifest(out)
    assert problems == [] and Counter(s.modality for s in samples) == {"image": 3, "video": 5}
    assert all(Path(json.loads(line)["target"]).is_absolute() for line in out.read_text().splitlines())


def test_command_with_no_usable_sample_fails_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "manifest.jsonl"
    assert build_manifest.main(["multiview", str(tmp_path / "empty"), str(tmp_path / "absent"),
                                "--out", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "0 multiview samples; 1 skipped:" in captured.out and str(tmp_path / "absent") in captured.out
    assert "no usable multiview sample" in captured.err and not out.exists()


def test_help_documents_the_conventions(capsys):
    with pytest.raises(SystemExit) as done:
        build_manifest.main(["multiview", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "<name>.mask.png" in text and "caption.txt" in text and "--pairs-per-view" in text


def test_runs_as_a_module(multiview_folder, tmp_path):
    out = tmp_path / "mv.jsonl"
    run = subprocess.run([sys.executable, "-m", "flexip_train.build_manifest", "multiview", str(multiview_folder[0]),
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "7 multiview samples; 5 skipped:" in run.stdout
    assert "multi-view sets in" in run.stderr  # the progress bar
    assert len(read_manifest(out)[0]) == 7
