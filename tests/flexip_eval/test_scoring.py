"""Scoring images on disk (no server): each CSV row carries the metrics of its own image, against
its own subject's reference and its own prompt, computed here again image by image with the tiny
models; masks beside a reference or an image count for the image metrics only."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flexip_core.aesthetic import load_aesthetic_head
from flexip_core.eval_encoders import load_dinov2, load_open_clip
from flexip_core.metrics import CLIP_IQA_PAIRS, clip_iqa, cosine
from flexip_eval.runner import GENERATION_LOG
from flexip_eval.scoring import SCORES, Scorer, load_image, load_mask, read_scores
from flexip_eval.spec import load_spec
from tests.flexip_eval.helpers import BLEND_TEMPLATE, references, write_spec


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_scoring):
    """A spec of 2 subjects x 2 prompts x 2 controls whose images are random PNGs put on disk by hand
    (one missing, one with a mask beside it), and the first subject's reference masked."""
    folder = tmp_path_factory.mktemp("scoring")
    a, b = references(folder / "refs", 2, seed=7)
    mask = np.zeros((80, 64), dtype=np.uint8)
    mask[10:60, 8:50] = 255
    Image.fromarray(mask).save(folder / "refs" / "a_mask.png")
    scoring = {**tiny_scoring, "clip_iqa_pairs": ["quality", "sharpness"]}
    spec_path = write_spec(folder, subjects=[("a", a, ["a red cup", "a cup in the rain"]), ("b", b, ["a dog", "a dog, sketch"])],
                           methods={"m": {"workflow": str(BLEND_TEMPLATE), "params": {"size": 32}}},
                           controls=(0.3, 0.7), scoring=scoring)
    spec_path.write_text(spec_path.read_text().replace('prompts = ["a red cup"', 'mask = "refs/a_mask.png"\nprompts = ["a red cup"'))
    spec = load_spec(spec_path)
    out = folder / "out"
    rng = np.random.RandomState(1)
    jobs = spec.jobs()
    for job in jobs[:-1]:  # the last image was never generated
        (out / job.image).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.rand(40, 40, 3) * 255).astype("uint8")).save(out / job.image)
    masked = out / jobs[2].image
    Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 10)).save(masked.with_name(masked.stem + "_mask.png"))
    (out / GENERATION_LOG).write_text(json.dumps({"image": jobs[0].image.as_posix(), "server": "http://s:1",
                                                  "seconds": 1.25}) + "\n")
    scorer = Scorer(spec.scoring)
    return spec, out, scorer, scorer.score(spec, out, progress=False)


def test_every_row_is_its_own_images_metrics(bench, tiny_scoring):
    spec, out, scorer, rows = bench
    jobs = spec.jobs()
    assert [r["image"] for r in rows] == [j.image.as_posix() for j in jobs[:-1]]
    clip = load_open_clip(tiny_scoring["clip"]["path"])
    dino = load_dinov2(tiny_scoring["dino"]["path"], resolution=32)
    head = load_aesthetic_head(tiny_scoring["aesthetic"]["head"])
    for job, row in zip(jobs, rows):
        subject = spec.subject(job.subject)
        image = load_image(out / job.image)
        mask_path = (out / job.image).with_name((out / job.image).stem + "_mask.png")
        image_mask = load_mask(mask_path) if mask_path.is_file() else None
        ref, ref_mask = load_image(subject.image), load_mask(subject.mask) if subject.mask else None
        plain = clip.images([image])
        expected = {
            "clip_i": cosine(clip.images([image], [image_mask]), clip.images([ref], [ref_mask])),
            "clip_t": cosine(plain, clip.texts([job.prompt])),
            "dino_i": cosine(dino.images([image], [image_mask]), dino.images([ref], [ref_mask])),
            "clip_iqa": clip_iqa(plain, clip.texts(list(CLIP_IQA_PAIRS["quality"]))[None])[0],
            "clip_iqa_sharpness": clip_iqa(plain, clip.texts(list(CLIP_IQA_PAIRS["sharpness"]))[None])[0],
            "aesthetic": head(plain),
        }
        for metric, value in expected.items():
            assert row[metric] == pytest.approx(value.item(), abs=1e-5), (job, metric)
        assert (row["method"], row["subject"], row["prompt"], row["seed"], row["control"]) == \
            (job.method, job.subject, job.prompt, job.seed, job.control)


def test_masks_change_only_the_image_metrics(bench, tiny_scoring):
    """The same image scored without its mask: CLIP-I and DINO-I move, the rest does not."""
    spec, out, scorer, rows = bench
    clip = load_open_clip(tiny_scoring["clip"]["path"])
    job, row = spec.jobs()[2], rows[2]
    image, ref = load_image(out / job.image), load_image(spec.subject(job.subject).image)
    unmasked_clip_i = cosine(clip.images([image]), clip.images([ref], [load_mask(spec.subject(job.subject).mask)]))
    assert abs(row["clip_i"] - unmasked_clip_i.item()) > 1e-4
    assert row["clip_t"] == pytest.approx(cosine(clip.images([image]), clip.texts([job.prompt])).item(), abs=1e-5)


def test_csv_is_tidy(bench):
    spec, out, scorer, rows = bench
    csv_rows = read_scores(out / SCORES)
    assert list(csv_rows[0]) == ["method", "subject", "prompt_index", "prompt", "seed", "control", "server", "seconds",
                                 "clip_t", "clip_i", "dino_i", "clip_iqa", "aesthetic", "clip_iqa_sharpness", "image"]
    assert len(csv_rows) == 7 and csv_rows[0]["server"] == "http://s:1" and csv_rows[0]["seconds"] == 1.25
    assert np.isnan(csv_rows[1]["seconds"]) and csv_rows[1]["server"] == ""
    assert [r["clip_i"] for r in csv_rows] == pytest.approx([r["clip_i"] for r in rows])
    info = json.loads((out / "scoring.json").read_text())
    assert info["images"] == 7 and "DINO-I" in info["models"] and info["clip_iqa_pairs"] == ["quality", "sharpness"]


def test_scoring_configuration_errors(tiny_scoring):
    with pytest.raises(ValueError, match="unknown pairs"):
        Scorer({**tiny_scoring, "clip_iqa_pairs": ["quality", "tasty"]})
    with pytest.raises(ValueError, match="needs a CLIP ViT-L/14"):
        Scorer({"aesthetic": tiny_scoring["aesthetic"]})
    only_dino = Scorer({"dino": tiny_scoring["dino"]})
    assert only_dino.columns() == ["dino_i"]
    assert torch.is_tensor(only_dino.dino.images([torch.rand(8, 8, 3)]))


def test_each_metric_names_its_backbone_and_the_defaults_are_the_papers(tiny_scoring, tmp_path):
    import shutil
    scorer = Scorer({"clip": tiny_scoring["clip"], "dino": {**tiny_scoring["dino"], "backbone": "dinov2"}})
    # The tiny folder's own architecture; named after the built-in one when a test of this session has
    # registered it with open_clip (test_eval_encoders does, as "flexip-test-tiny").
    assert scorer.clip.backbone in ("custom ViT-w64/8 (2 layers, 32 px, 768-d)", "flexip-test-tiny")
    clip = f"CLIP {scorer.clip.backbone}"
    assert scorer.backbones() == {"clip_t": clip, "clip_i": clip, "clip_iqa": clip,
                                  **{f"clip_iqa_{p}": clip for p in CLIP_IQA_PAIRS if p != "quality"},
                                  "dino_i": "DINOv2-w128/8"}
    # a DINOv2 file names itself with no backbone given, as specs written before backbones did
    assert Scorer({"dino": tiny_scoring["dino"]}).dino.backbone == "DINOv2-w128/8"
    with pytest.raises(ValueError, match="backbone 'dino-v3' is not one of dino-vits16, dino-vits8"):
        Scorer({"dino": {**tiny_scoring["dino"], "backbone": "dino-v3"}})
    with pytest.raises(ValueError, match=r"holds (custom ViT-w64/8 .*|flexip-test-tiny) \(its open_clip_config.json\), not ViT-B-32"):
        Scorer({"clip": {**tiny_scoring["clip"], "backbone": "ViT-B-32"}})
    # a state-dict file with no backbone named is read as the default, CLIP ViT-B/32
    weights = shutil.copy(f"{tiny_scoring['clip']['path']}/open_clip_model.safetensors", tmp_path / "clip.safetensors")
    with pytest.raises(ValueError, match=r"does not match open_clip ViT-B-32 \(clip.safetensors\)"):
        Scorer({"clip": {"path": str(weights)}})
    # a DINO v1 path is a folder with config.json; anything else with backbone dino-vits16 is refused
    with pytest.raises(FileNotFoundError, match="hub-format folder holding config.json and model.safetensors"):
        Scorer({"dino": {**tiny_scoring["dino"], "backbone": "dino-vits16"}})
