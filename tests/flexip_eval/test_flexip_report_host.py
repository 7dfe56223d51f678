"""End to end: FlexIP's evaluation template through the real ComfyUI (the session's shared server,
full-shape random-initialised SD1.5, CLIP ViT-H, DINOv2-L and FlexIP files, 64 px, 2 steps) for
2 subjects x 2 prompts x 2 gamma values, scored (tiny random CLIP with both towers and aesthetic
head, the full-shape random DINOv2-L file for DINO-I), reported with plots; then re-scored with
ComfyUI's HF CLIP ViT-H image encoder for CLIP-I (the image-only route).

HEAVY: flock /tmp/flexip-heavy.lock .host/venv/bin/python -m pytest tests/flexip_eval/test_flexip_report_host.py
"""
import hashlib
import math
import re

import pytest
from PIL import Image

from flexip_eval.cli import main
from flexip_eval.scoring import SCORES, read_scores
from tests.flexip_eval.helpers import references, write_spec

GAMMAS = (0.2, 0.9)
NOTE = "Random-initialised model files: these numbers test the pipeline and say nothing about FlexIP."


@pytest.fixture(scope="module")
def flexip_run(server, model_files, tiny_scoring, tmp_path_factory):
    import random_models
    folder = tmp_path_factory.mktemp("flexip-eval")
    teapot, robot = references(folder / "refs", 2, seed=4)
    scoring = {**tiny_scoring, "dino": {"path": str(random_models.dinov2_large())}}
    spec = write_spec(folder, name="flexip-random", note=NOTE, controls=GAMMAS, servers=[server.url], scoring=scoring,
                      subjects=[("teapot", teapot, ["a teapot on a beach", "a teapot, oil painting"]),
                                ("robot", robot, ["a robot in the snow", "a robot on the moon"])],
                      methods={"flexip": {"workflow": "flexip_sd15.json", "control": "gamma",
                                          "params": {**model_files, "size": 64, "steps": 2, "cfg": 7.5}}})
    out = folder / "out"
    assert main(["run", str(spec), "--out", str(out), "--no-progress"]) == 0
    return spec, out


def test_flexip_sweep_gives_the_csv_the_report_and_the_plots(flexip_run, server):
    spec, out = flexip_run
    rows = read_scores(out / SCORES)
    assert len(rows) == 2 * 2 * len(GAMMAS)
    metrics = ("clip_t", "clip_i", "dino_i", "clip_iqa", "aesthetic")
    assert all(math.isfinite(r[m]) for r in rows for m in metrics)
    assert all(r["server"] == server.url and r["seconds"] > 0 for r in rows)
    # gamma moves the image (so the sweep measures something), in every sweep
    digests = {(r["subject"], r["prompt_index"], r["control"]): hashlib.sha256(
        Image.open(out / r["image"]).tobytes()).hexdigest() for r in rows}
    for subject, prompt in {(s, p) for s, p, _ in digests}:
        assert digests[(subject, prompt, GAMMAS[0])] != digests[(subject, prompt, GAMMAS[1])]
    assert len({r["dino_i"] for r in rows}) == len(rows)

    report = (out / "report.md").read_text()
    assert NOTE in report
    means = {g: {m: sum(r[m] for r in rows if r["control"] == g) / 4 for m in metrics} for g in GAMMAS}
    for gamma, other in (GAMMAS, GAMMAS[::-1]):
        (line,) = [l for l in report.splitlines() if l.startswith(f"| flexip | gamma = {gamma:g} |")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "4"
        for column, metric in zip(cells[3:8], metrics):   # each metric's mean over its 4 images
            assert column.startswith(f"{means[gamma][metric]:.{2 if metric == 'aesthetic' else 3}f} ± ")
        # mRank over the two rows: rank 1 where this gamma's mean is higher, 2 where lower
        ranks = [1.0 if means[gamma][m] > means[other][m] else 2.0 if means[gamma][m] < means[other][m] else 1.5
                 for m in metrics]
        assert cells[8] == f"{sum(ranks) / len(ranks):.2f}"
    assert "## Smoothness of the control" in report and re.search(r"\| flexip \| 4 \| ", report)
    for plot in ("metrics_vs_control.png", "front.png", "contact_sheet.png"):
        assert f"(plots/{plot})" in report
        width, height = Image.open(out / "plots" / plot).size
        assert width > 300 and height > 200
    assert "run started on" in report


def test_rescoring_with_comfyuis_clip_vit_h_image_encoder(flexip_run, tiny_scoring):
    """format = "hf-vision": CLIP-I from the ViT-H/14 file ComfyUI loads; no text tower, so no
    CLIP-T or CLIP-IQA; the aesthetic head keeps its own 768-d CLIP."""
    import random_models
    spec, out = flexip_run
    text = spec.read_text()
    text = text.replace(f'[scoring.clip]\npath = "{tiny_scoring["clip"]["path"]}"',
                        f'[scoring.clip]\npath = "{random_models.clip_vit_h()}"\nformat = "hf-vision"')
    text = text.replace(f'[scoring.aesthetic]\n', f'[scoring.aesthetic]\nclip_path = "{tiny_scoring["clip"]["path"]}"\n')
    spec.write_text(text)
    assert main(["score", str(spec), "--out", str(out), "--no-progress"]) == 0
    rows = read_scores(out / SCORES)
    assert "clip_t" not in rows[0] and "clip_iqa" not in rows[0]
    assert all(math.isfinite(r["clip_i"]) and math.isfinite(r["aesthetic"]) for r in rows)
    report = (out / "report.md").read_text()
    assert "open_clip ViT-H-14 image tower from HF file" in report and "CLIP-T" not in report.split("## Table 1")[1]
