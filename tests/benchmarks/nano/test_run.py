"""The miniature, CI-sized, from nothing: `python -m benchmarks.nano --size ci` in a fresh cache
(data, encoders, base, FlexIP-nano trained by the project's Trainer, evaluation, report), then the
trend FlexIP's gamma must show on held-out subjects, with the slack a run this short needs.

The full run (`python -m benchmarks.nano`) reports the issue's targets; this one is about 5x
shorter in every stage, has no baseline and trains the default variant. On the claim's metric
(scoring.py) it asserts the method's direction with the slack a run this short needs: as gamma
grows, identity (the subject's attributes the prompt does not name) rises, smoothly, and the prompt
score falls; at gamma 0 the prompt is followed about as well as by the base model.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# Slack, stated once, on the claim's metric (scoring.py). The CI-sized run of the default variant
# (subject-recolour-s since 2026-12-07; calibrated k = 3.5) measured: identity (colour, pattern, mark)
# 0.201 -> 0.403 from gamma 0 to 1 (one s.e. about 0.04), Spearman 1.0 on the seed-mean curve, identity jump
# 1.86; prompt 0.882 -> 0.826, and 0.882 at gamma 0 against the base model's 0.868. The previous default
# (subject) measured identity 0.257 -> 0.410, jump 1.5, prompt 0.882 -> 0.819 (base 0.854).
# Identity here counts every subject attribute the prompt does not name (colour, pattern, mark), drawable or
# not: at this size the drawability is measured on 48 pictures, and on 2026-12-07 (another CPU) the mark, the
# attribute the preservation branch carries (0.125 -> 0.583), came out at 35 of 48 against the 36 the 0.75
# threshold needs, which left colour and pattern alone (0.302 -> 0.323) and failed the guard on one picture.
# Counting all three, that run measured 0.243 -> 0.410, Spearman 1.0, jump 1.5.
UNNAMED = ("colour", "pattern", "mark")  # world.prompt names the shape only
MIN_IDENTITY_GAIN = 0.08    # identity at gamma 1 above gamma 0 (about half the measured gain, two s.e.)
MIN_RHO_IDENTITY = 0.8      # Spearman(gamma, identity) of the seed-mean curve (full run: >= 0.9 per seed)
MAX_JUMP = 3.0              # largest / mean neighbour step of identity (3 steps: 3 = all in one)
MIN_PROMPT_DROP = 0.02      # prompt at gamma 0 above prompt at gamma 1
MAX_PROMPT_LOSS = 0.1       # prompt at gamma 0 below the base model's by at most this


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("nano")
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "benchmarks.nano", "--size", "ci", "--cache", str(cache),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((cache / "report" / default_report() / "summary.json").read_text())
    return cache, summary, time.time() - start


def default_report():
    from benchmarks.nano.__main__ import DEFAULT_REPORT
    return DEFAULT_REPORT


def test_ci_run_builds_everything_and_writes_the_report(ci_run):
    cache, summary, seconds = ci_run
    for name in ("report.md", "controls.png", "front.png", "smoothness.png", "contact_sheet.png", "gamma_sweep.png",
                 "training_flexip.png", "summary.json"):
        assert (cache / "report" / default_report() / name).stat().st_size > 0, name
    assert (cache / "report" / "ablation.md").stat().st_size > 0
    from benchmarks.nano.__main__ import DEFAULT_VARIANT
    assert (cache / f"flexip-{DEFAULT_VARIANT}" / "flexip.safetensors").is_file()
    training = summary["facts"]["flexip_training"]
    assert training["steps"] == summary["facts"]["size"]["adapters"]["steps"] and training["variant_samples"] > 0
    # --jobs 2 (the default): the second lane built the encoders while this one built the base
    stamps = {name: json.loads((cache / name / "stamp.json").read_text()) for name in ("encoders", "base")}
    assert summary["facts"]["jobs"] == 2
    assert stamps["encoders"]["started"] < stamps["base"]["started"] + stamps["base"]["seconds"]
    assert stamps["base"]["started"] < stamps["encoders"]["started"] + stamps["encoders"]["seconds"]
    print(f"CI-sized nano run: {seconds / 60:.1f} min; stages {summary['facts']['stage_seconds']}")


def test_gamma_moves_identity_up_and_the_prompt_down(ci_run):
    """The method's direction on held-out subjects: a regression that stops gamma from keeping the
    subject (or from leaving the prompt at gamma 0) fails here."""
    from flexip_core.smoothness import largest_jump, monotonicity

    _, summary, _ = ci_run
    flexip, base = summary["FlexIP"], summary["base"]
    agree = flexip["attributes"]["agree"]
    identity = [sum(agree[a][i] for a in UNNAMED) / len(UNNAMED) for i in range(len(flexip["values"]))]
    rho, jump = monotonicity(flexip["values"], identity), largest_jump(flexip["values"], identity)
    report = json.dumps({"identity (colour, pattern, mark)": identity, "rho": rho, "jump": jump,
                         "identity (counted)": flexip["identity"], "prompt": flexip["prompt"], "base": base["prompt"],
                         "counted": summary["counted"], "drawable": summary["drawable"]})
    assert identity[-1] >= identity[0] + MIN_IDENTITY_GAIN, report
    assert rho >= MIN_RHO_IDENTITY, report
    assert jump < MAX_JUMP, report
    assert flexip["prompt"][0] >= flexip["prompt"][-1] + MIN_PROMPT_DROP, report
    assert flexip["prompt"][0] >= base["prompt"][0] - MAX_PROMPT_LOSS, report


def test_the_calibrated_slider_is_fitted_written_and_read_back(ci_run):
    """The other slider map than the default's (--slider) on the same cache: nothing is retrained; the
    calibration stage fits k on training subjects and writes it into a copy of FlexIP's weight file, which the
    sweeps read as the loader node does. The slider's ends do not move (0^k = 0, 1^k = 1), so with the same
    noise the calibrated sweep's pictures at gamma 0 and 1 are the paper's map's, exactly."""
    import numpy as np

    from benchmarks.nano import calibrate
    from benchmarks.nano.__main__ import DEFAULT_SLIDER, DEFAULT_VARIANT, SIZES
    from safetensors import safe_open

    from flexip_core.slider import slider_exponent

    cache, _, _ = ci_run
    name = DEFAULT_VARIANT
    trained = (cache / f"flexip-{name}" / "stamp.json").read_text()
    other = "paper" if DEFAULT_SLIDER == "calibrated" else "calibrated"
    done = subprocess.run([sys.executable, "-m", "benchmarks.nano", "--size", "ci", "--cache", str(cache),
                           "--slider", other, "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (cache / f"flexip-{name}" / "stamp.json").read_text() == trained  # not retrained

    fitted = json.loads((cache / f"slider-{name}" / "calibration.json").read_text())
    with safe_open(cache / f"slider-{name}" / "flexip.safetensors", "pt") as f:  # the nano config is not registered here
        exponent = slider_exponent(f.metadata())
    assert exponent == fitted["exponent"] and fitted["exponent"] in calibrate.EXPONENTS
    assert fitted["worst_jump"][str(fitted["exponent"])] == min(
        v for v in fitted["worst_jump"].values() if v == v)  # NaN (a flat curve) never wins
    # The fit reads each case set's identity averaged over the calibration's seeds and its cases.
    swept = np.load(cache / f"calibration-scene-{name}" / "identity.npz")
    assert swept["per_case"].shape == (len(calibrate.SEEDS), len(calibrate.BLEND_WEIGHTS), SIZES["ci"].calibration_subjects)
    assert np.allclose(swept["mean"], swept["per_case"].mean((0, 2)))
    assert np.allclose(fitted["identity"]["scene"], swept["mean"])
    calibrated = json.loads((cache / "report" / f"{name}-calibrated" / "summary.json").read_text())
    assert calibrated["facts"]["slider"]["exponent"] == exponent
    assert "Slider: calibrated" in (cache / "report" / f"{name}-calibrated" / "report.md").read_text()

    paper = np.load(cache / f"evaluation-{name}" / "results.npz")
    mapped = np.load(cache / f"evaluation-{name}-calibrated" / "results.npz")
    for end in (0, -1):
        assert np.array_equal(mapped["FlexIP/pictures"][:, end], paper["FlexIP/pictures"][:, end])
    print(f"CI-sized calibration: blend weight = gamma^{exponent:g}; worst jumps {fitted['worst_jump']}")
