"""The report from made-up scores: Table 1's means, intervals and mRank, the smoothness table,
the run history, and the plots."""
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import t as student_t

from flexip_core.smoothness import front_area
from flexip_eval.report import run_history, smoothness_table, table1, write_report
from flexip_eval.runner import RUN_LOG
from flexip_eval.spec import load_spec
from flexip_eval.stats import mean_ci
from tests.flexip_eval.helpers import BLEND_TEMPLATE, references, write_spec

METRICS = ["clip_t", "clip_i", "dino_i", "clip_iqa", "aesthetic"]


@pytest.fixture
def made_up(tmp_path):
    """Two methods over one subject, one prompt, two seeds: 'smooth' rises evenly with its control,
    'jumpy' moves all at once."""
    (image,) = references(tmp_path / "refs", 1)
    spec = load_spec(write_spec(tmp_path, subjects=[("cat", image, ["a cat"])], seeds=(0, 1),
                                methods={"smooth": {"workflow": str(BLEND_TEMPLATE), "control": "gamma",
                                                    "controls": [0.0, 0.5, 1.0], "params": {"size": 8}},
                                         "jumpy": {"workflow": str(BLEND_TEMPLATE), "control": "weight",
                                                   "controls": [0.0, 0.5, 1.0], "params": {"size": 8}}}))
    curves = {"smooth": ([0.5, 0.6, 0.7], [0.30, 0.25, 0.20]), "jumpy": ([0.5, 0.5, 0.9], [0.30, 0.30, 0.10])}
    rows = []
    for job in spec.jobs():
        k = spec.methods[job.method].controls.index(job.control)
        clip_i, clip_t = curves[job.method]
        rows.append({"method": job.method, "subject": job.subject, "prompt_index": job.prompt_index, "seed": job.seed,
                     "control": job.control, "clip_i": clip_i[k] + 0.01 * job.seed, "clip_t": clip_t[k],
                     "dino_i": 0.4 + 0.1 * job.seed, "clip_iqa": 0.5, "aesthetic": 5.0 + job.control,
                     "seconds": 2.0, "image": job.image.as_posix()})
    return spec, tmp_path / "out", rows


def test_table1_means_intervals_and_mrank(made_up):
    spec, out, rows = made_up
    stats, ranks, lines = table1(rows, METRICS, {"smooth": "gamma", "jumpy": "weight"})
    # smooth at 0.5: CLIP-I of the two seeds 0.60 and 0.61
    mean, half, n = stats[("smooth", 0.5)]["clip_i"]
    assert (mean, n) == (pytest.approx(0.605), 2)
    assert half == pytest.approx(student_t.ppf(0.975, 1) * np.std([0.60, 0.61], ddof=1) / math.sqrt(2))
    # mRank over the six rows, ranked by hand (ties share their mean rank):
    #   CLIP-T   s0 .30  s.5 .25  s1 .20  j0 .30  j.5 .30  j1 .10  -> 2, 4, 5, 2, 2, 6
    #   CLIP-I   .505    .605     .705    .505    .505     .905   -> 5, 3, 2, 5, 5, 1
    #   DINO-I, CLIP-IQA: all equal -> 3.5 each
    #   aesthetic 5.0    5.5      6.0     5.0     5.5      6.0    -> 5.5, 3.5, 1.5, 5.5, 3.5, 1.5
    assert ranks == pytest.approx({("smooth", 0.0): 19.5 / 5, ("smooth", 0.5): 17.5 / 5, ("smooth", 1.0): 15.5 / 5,
                                   ("jumpy", 0.0): 19.5 / 5, ("jumpy", 0.5): 17.5 / 5, ("jumpy", 1.0): 15.5 / 5})
    assert lines[2][:3] == ["jumpy", "weight = 0", "2"]
    assert lines[0][3:6] == ["CLIP-T", "CLIP-I", "DINO-I"]  # no backbones given
    named = table1(rows, METRICS, {"smooth": "gamma", "jumpy": "weight"}, {"clip_i": "CLIP ViT-B-32",
                                                                          "dino_i": "DINO ViT-S/16"})[2]
    assert named[0][3:6] == ["CLIP-T", "CLIP-I [CLIP ViT-B-32]", "DINO-I [DINO ViT-S/16]"] and named[2:] == lines[2:]
    assert lines[2][4] == "0.505 ± " + f"{half:.3f}"


def test_smoothness_table_numbers(made_up):
    spec, out, rows = made_up
    per_method, lines = smoothness_table(rows)
    smooth, jumpy = per_method["smooth"], per_method["jumpy"]
    assert len(smooth) == len(jumpy) == 2   # two seeds
    assert smooth[0]["rho_clip_i"] == pytest.approx(1.0) and smooth[0]["rho_clip_t"] == pytest.approx(-1.0)
    assert smooth[0]["jump_clip_i"] == pytest.approx(1.0) and jumpy[0]["jump_clip_i"] == pytest.approx(2.0)
    assert jumpy[1]["front_area"] == pytest.approx(front_area([0.30, 0.30, 0.10], [0.51, 0.51, 0.91]))
    (jumpy_line,) = [line for line in lines if line[0] == "jumpy"]
    # Spearman of the step [0.5, 0.5, 0.9]: ranks 1.5, 1.5, 3 against 1, 2, 3
    assert jumpy_line[2] == f"{0.8660254:.3f} ± 0.000"
    assert jumpy_line[4] == "2.000 ± 0.000"


def test_report_plots_and_history(made_up):
    spec, out, rows = made_up
    for job in spec.jobs()[:4]:
        (out / job.image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40, 90, 200)).save(out / job.image)
    events = [{"event": "start", "time": "t0", "servers": ["http://a", "http://b"], "queue_depth": 2, "images": 12,
               "found_on_disk": 0, "to_generate": 12},
              {"event": "server_down", "time": "t1", "server": "http://a", "images_before": 3,
               "message": "connection refused", "servers_left": ["http://b"]},
              {"event": "reassigned", "time": "t1", "image": "x", "server": "http://a"},
              {"event": "prompt_failed", "time": "t2", "image": "y", "server": "http://b", "message": "bad value"},
              {"event": "given_up", "time": "t3", "image": "y", "tried": ["http://b"]},
              {"event": "end", "time": "t4", "generated": 11, "given_up": 1, "left": 0,
               "per_server": {"http://a": 3, "http://b": 8}}]
    out.mkdir(exist_ok=True)
    (out / RUN_LOG).write_text("".join(json.dumps(e) + "\n" for e in events))
    history = run_history(out)
    assert "**server http://a stopped answering** after 3 images (connection refused); its prompts went to http://b" \
        in history[1]
    assert "gave up y after failing on http://b" in history[2]
    assert "11 generated (http://a: 3, http://b: 8), 1 given up" in history[3]
    assert history[4].startswith("- 1 prompts in flight")
    report = write_report(spec, out, rows, {"CLIP-I, CLIP-T, CLIP-IQA": "tiny"}, note="made up").read_text()
    assert "> made up" in report and "12 of 12 images scored" in report
    assert "| smooth | 2 |" in report and "## Generation" in report
    for plot in ("metrics_vs_control.png", "front.png", "contact_sheet.png"):
        assert Image.open(out / "plots" / plot).size[0] > 300


def test_mean_ci_edge_cases():
    assert mean_ci([]) == (pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True), 0)
    mean, half, n = mean_ci([2.0, math.nan])
    assert (mean, n) == (2.0, 1) and math.isnan(half)
