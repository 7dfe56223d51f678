"""The manifest: Sample rules, JSONL reading (bad lines are problems, not errors) and writing,
the summary."""
import json
import os

import pytest

from flexip_train.manifest import Problem, Sample, read_manifest, summarize, write_manifest

from tests.flexip_train.conftest import write_image, write_video


def test_sample_rules():
    image = Sample("image", ("a.png",), "a.png", "a cat", mask="a.mask.png")
    assert not image.is_variant and image.paths() == ("a.png", "a.mask.png")
    assert Sample("video", ("v.mp4",), "v.mp4", "a walk", frames=(3, 0)).is_variant
    assert Sample("multiview", ("0.png",), "1.png", "a mug").is_variant
    refused = {
        "modality must be one of": dict(modality="audio"),
        "non-empty tuple": dict(references=[]),
        "missing caption": dict(caption=" "),
        "a mask goes with one reference": dict(references=("a.png", "b.png"), mask="a.mask.png"),
        "frames are for video samples": dict(frames=(0, 1)),
    }
    for message, change in refused.items():
        with pytest.raises(ValueError, match=message):
            Sample(**{**dict(modality="image", references=("a.png",), target="a.png", caption="c"), **change})
    with pytest.raises(ValueError, match="the target is the same path"):
        Sample("video", ("v.mp4",), "w.mp4", "c")
    with pytest.raises(ValueError, match="two frame indices"):
        Sample("video", ("v.mp4",), "v.mp4", "c", frames=(-1, 2))
    with pytest.raises(ValueError, match="give the frames too"):
        Sample("video", ("v.mp4",), "v.mp4", "c", mask="m.png")
    view = Sample("multiview", ("0.png", "1.png"), "2.png", "a mug", loss_mask="2.loss.mask.png")
    assert view.paths() == ("0.png", "1.png", "2.png", "2.loss.mask.png")  # several references, one target mask
    assert Sample("video", ("v.mp4",), "v.mp4", "c", frames=(0, 4), loss_mask="m.png").loss_mask == "m.png"
    with pytest.raises(ValueError, match="loss_mask is of its target frame: give the frames too"):
        Sample("video", ("v.mp4",), "v.mp4", "c", loss_mask="m.png")
    with pytest.raises(ValueError, match="loss_mask must be a path"):
        Sample("image", ("a.png",), "a.png", "c", loss_mask="")
    assert [Sample("multiview", ("0.png",), "1.png", "c", gamma=g).gamma for g in (0, 0.25, 1.0)] == [0, 0.25, 1.0]
    for bad in (-0.1, 1.5, True, "0", float("nan")):
        with pytest.raises(ValueError, match="gamma must be a number from 0 to 1"):
            Sample("multiview", ("0.png",), "1.png", "c", gamma=bad)


def test_a_samples_own_gamma_round_trips_and_a_bad_one_is_a_problem(tmp_path):
    picture = write_image(tmp_path / "a.png")
    samples = [Sample("multiview", (str(picture),), str(picture), "an edit pair", gamma=0.0),
               Sample("image", (str(picture),), str(picture), "the gate's gamma")]
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(samples, manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert records[0]["gamma"] == 0.0 and "gamma" not in records[1]
    assert read_manifest(manifest) == (samples, [])
    records[1]["gamma"] = 2
    manifest.write_text("\n".join(map(json.dumps, records)) + "\n")
    read, problems = read_manifest(manifest)
    assert read == samples[:1] and len(problems) == 1 and "gamma must be a number from 0 to 1" in problems[0].detail


def test_loss_mask_round_trip_and_missing_file(tmp_path):
    picture = write_image(tmp_path / "data" / "a.png")
    mask = write_image(tmp_path / "data" / "a.loss.mask.png")
    samples = [Sample("image", (str(picture),), str(picture), "a picture", loss_mask=str(mask)),
               Sample("image", (str(picture),), str(picture), "no mask")]
    manifest = tmp_path / "data" / "manifest.jsonl"
    write_manifest(samples, manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert records[0]["loss_mask"] == "a.loss.mask.png" and "loss_mask" not in records[1]
    assert read_manifest(manifest) == (samples, [])
    mask.unlink()
    read, problems = read_manifest(manifest)
    assert read == samples[1:] and [(p.reason, p.detail) for p in problems] == [("missing file", str(mask))]


def test_round_trip_with_relative_and_absolute_paths(tmp_path):
    inside = write_image(tmp_path / "data" / "pics" / "a.png")
    outside = write_image(tmp_path / "elsewhere" / "b.png")
    video = write_video(tmp_path / "data" / "clip.mp4", 6)
    samples = [Sample("image", (str(inside),), str(inside), "a picture", mask=None),
               Sample("multiview", (str(inside),), str(outside), "two views"),
               Sample("video", (str(video),), str(video), "a clip", frames=(1, 5))]
    manifest = tmp_path / "data" / "manifest.jsonl"
    write_manifest(samples, manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert records[0] == {"modality": "image", "references": ["pics/a.png"], "target": "pics/a.png",
                          "caption": "a picture"}
    assert records[1]["target"] == str(outside) and records[2]["frames"] == [1, 5]
    read, problems = read_manifest(manifest)
    assert problems == [] and read == samples
    # the folder moves with its manifest: the relative paths still resolve
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    read, problems = read_manifest(moved / "manifest.jsonl")
    assert problems == [] and read[0].target == str(moved / "pics" / "a.png")


def test_bad_lines_are_problems_with_their_line(tmp_path):
    write_image(tmp_path / "a.png")
    lines = [
        {"modality": "image", "references": "a.png", "caption": "shorthand: one path, target defaults to it"},
        "{not json",
        {"modality": "image", "references": ["a.png"], "captions": "misspelt"},
        {"modality": "image", "references": ["a.png"], "caption": "ok", "weight": 2},
        {"modality": "image", "references": ["a.png"]},
        {"modality": "image", "references": ["a.png"], "caption": ""},
        {"modality": "sound", "references": ["a.png"], "caption": "x"},
        {"modality": "image", "references": ["gone.png"], "caption": "x"},
        {"modality": "multiview", "references": ["a.png"], "caption": "no target"},
        {"modality": "image", "references": ["a.png"], "caption": "x", "frames": [0, 1]},
        [1, 2],
        "",
        {"modality": "image", "references": ["a.png"], "target": "a.png", "caption": "the last line"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    samples, problems = read_manifest(manifest)
    assert [s.caption for s in samples] == ["shorthand: one path, target defaults to it", "the last line"]
    assert samples[0].target == samples[0].references[0] == str(tmp_path / "a.png")
    found = {int(p.path.rsplit(":", 1)[1]): (p.reason, p.detail) for p in problems}
    assert all(p.path.startswith(str(manifest) + ":") for p in problems)
    assert {line: reason for line, (reason, _) in found.items()} == {
        2: "malformed line", 3: "invalid sample", 4: "invalid sample", 5: "missing caption", 6: "missing caption",
        7: "invalid sample", 8: "missing file", 9: "invalid sample", 10: "invalid sample", 11: "invalid sample"}
    assert "'captions'" in found[3][1] and "'weight'" in found[4][1] and "sound" in found[7][1]
    assert found[8][1] == str(tmp_path / "gone.png") and "missing target" in found[9][1]


def test_append_continues_a_file_without_a_final_newline(tmp_path):
    write_image(tmp_path / "a.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"modality": "image", "references": ["a.png"], "caption": "first"}))
    write_manifest([Sample("image", (str(tmp_path / "a.png"),), str(tmp_path / "a.png"), "second")], manifest,
                   append=True)
    samples, problems = read_manifest(manifest)
    assert problems == [] and [s.caption for s in samples] == ["first", "second"]


def test_summary_groups_by_reason_with_every_path():
    problems = [Problem("x.png", "unreadable image", "cannot identify"), Problem("y.mp4", "too few frames", "1 frame"),
                Problem("z.png", "unreadable image")]
    assert summarize(["s"] * 4, problems).splitlines() == [
        "4 samples; 3 skipped:", "  unreadable image: 2", "    x.png (cannot identify)", "    z.png",
        "  too few frames: 1", "    y.mp4 (1 frame)"]
    assert summarize(["s"], []) == "1 samples; 0 skipped"
    assert str(problems[0]) == "x.png: unreadable image (cannot identify)"


def test_paths_resolve_against_the_manifest_not_the_working_directory(tmp_path, monkeypatch):
    write_image(tmp_path / "d" / "a.png")
    (tmp_path / "d" / "m.jsonl").write_text(json.dumps({"modality": "image", "references": ["a.png"],
                                                       "caption": "c"}) + "\n")
    monkeypatch.chdir(tmp_path)
    samples, problems = read_manifest(os.path.join("d", "m.jsonl"))
    assert problems == [] and samples[0].target == str(tmp_path / "d" / "a.png")
