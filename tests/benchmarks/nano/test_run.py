"""The miniature, CI-sized, from nothing: `python -m benchmarks.nano --size ci` in a fresh cache
(data, encoders, base, FlexIP-nano trained by the project's Trainer, evaluation, report), then the
trend FlexIP's gamma must show on held-out subjects, with the slack a run this short needs.

The full run (`python -m benchmarks.nano`, about 45 minutes) reports the issue's targets; this one
is about 5x shorter in every stage and has no baseline. Its base model follows the prompt's scene
but cannot yet draw a subject's colours and patterns (identity scores stay near the base model's,
about 0.3), so it asserts the side of the trade-off a short run can show: as gamma grows, the
picture follows the prompt less and shows more of the reference's scene, smoothly, and at gamma 0
it follows the prompt about as well as the base model.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# Slack, stated once. The CI run measured -1.0, 0.10, +0.035 and 0.06 at 900 base / 500 FlexIP steps with the
# unweighted loss; with the subject weighted 5x (as shipped): -1.0, 0.077, +0.007, 0.062, prompt jump 1.36.
MAX_RHO_PROMPT = -0.8       # Spearman(gamma, prompt) of the seed-mean curve (full run: <= -0.9 per seed)
MIN_PROMPT_DROP = 0.04      # prompt at gamma 0 above prompt at gamma 1: the control trades something
MAX_PROMPT_LOSS = 0.1       # prompt at gamma 0 below the base model's by at most this (full run: within 0.1)
MIN_COPY_GAIN = 0.02        # the reference's scene attributes shown, at gamma 1 above gamma 0
MAX_JUMP = 3.0              # largest / mean neighbour step of the prompt score (3 steps: 3 = all in one)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("nano")
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "benchmarks.nano", "--size", "ci", "--cache", str(cache),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from benchmarks.nano.train import DEFAULT_VARIANT
    summary = json.loads((cache / "report" / DEFAULT_VARIANT / "summary.json").read_text())
    return cache, summary, time.time() - start


def test_ci_run_builds_everything_and_writes_the_report(ci_run):
    cache, summary, seconds = ci_run
    for name in ("report.md", "controls.png", "front.png", "smoothness.png", "contact_sheet.png", "gamma_sweep.png",
                 "training_flexip.png", "summary.json"):
        assert (cache / "report" / summary["facts"]["variant"]["name"] / name).stat().st_size > 0, name
    assert (cache / "report" / "ablation.md").stat().st_size > 0
    assert (cache / f"flexip-{summary['facts']['variant']['name']}" / "flexip.safetensors").is_file()
    training = summary["facts"]["flexip_training"]
    assert training["steps"] == summary["facts"]["size"]["adapters"]["steps"] and training["variant_samples"] > 0
    print(f"CI-sized nano run: {seconds / 60:.1f} min; stages {summary['facts']['stage_seconds']}")


def test_gamma_trades_the_prompt_for_the_reference(ci_run):
    _, summary, _ = ci_run
    first = summary["first_evaluator"]  # the scores these slacks were measured on
    flexip, base = first["FlexIP"], first["base"]
    curve = flexip["mean_curve"]
    copied = [sum(c) / len(c) for c in zip(*flexip["attributes"]["reference_attributes"].values())]
    report = json.dumps({"prompt": flexip["prompt"], "identity": flexip["identity"], "copied": copied,
                         "base": {k: base[k] for k in ("identity", "prompt")}, "curve": curve})
    assert curve["rho_prompt"] <= MAX_RHO_PROMPT, report
    assert flexip["prompt"][0] >= flexip["prompt"][-1] + MIN_PROMPT_DROP, report
    assert flexip["prompt"][0] >= base["prompt"] - MAX_PROMPT_LOSS, report
    assert copied[-1] >= copied[0] + MIN_COPY_GAIN, report
    assert curve["jump_prompt"] < MAX_JUMP, report
