"""The miniature's numbers (benchmarks/nano/summary.py): the front, the reversals, the paired identity gap and
the build's length."""
import numpy as np
import pytest

from benchmarks.nano.summary import BASELINE, FLEXIP, _reversals, baseline_front, build_minutes, front_covered, identity_gap


def _method(identity, prompt, se=0.01):
    values = [0.0, 0.5, 1.0][:len(identity)]
    return {"values": values, "identity": identity, "prompt": prompt, "identity_se": [se] * len(identity),
            "prompt_se": [se] * len(prompt)}


def test_front_cover_within_one_standard_error():
    baseline = _method([0.3, 0.6, 0.55], [1.0, 0.9, 0.8])  # (0.55, 0.8) is beaten by (0.6, 0.9): not on its front
    assert baseline_front(baseline) == [0, 1]
    # FlexIP reaches identity 0.6 - 0.014 at prompt 0.9: within one s.e. of the difference (0.01 * sqrt 2)
    assert front_covered(_method([0.3, 0.586, 0.7], [1.0, 0.9, 0.5]), baseline) == {0: True, 1: True}
    assert front_covered(_method([0.3, 0.58, 0.7], [1.0, 0.9, 0.5]), baseline) == {0: True, 1: False}


def test_reversals_beyond_one_standard_error():
    rising = np.array([[0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 1.0], [0.5, 0.25, 0.5, 0.75]])  # [values, cases]
    rows = _reversals([0.0, 0.5, 1.0], rising, sign=1)
    step = rising[2] - rising[1]
    assert rows == [[0.5, 1.0, pytest.approx(step.mean()), pytest.approx(step.std(ddof=1) / 2)]]
    assert _reversals([0.0, 0.5, 1.0], rising, sign=-1)[0][:2] == [0.0, 0.5]


def test_build_minutes_counts_the_two_lanes_side_by_side():
    seconds = {"data": 6, "encoders": 114, "base": 1068, "flexip-paper": 708, "baseline-scene": 684,
               "evaluation-paper": 222, "recolour-paper": 230, "drawability": 18}
    assert build_minutes(seconds, jobs=1) == pytest.approx(3050 / 60)
    # data + base beside encoders, FlexIP beside the baseline, the scene sweeps beside the recolour ones
    assert build_minutes(seconds, jobs=2) == pytest.approx((6 + 1068 + 708 + 230 + 18) / 60)
    assert build_minutes({"data": 6, "encoders": 114, "base": 90}, jobs=2) == pytest.approx(114 / 60)
    # the calibrated slider: its two calibration sweeps side by side, the fit after them
    calibrated = {**seconds, "calibration-scene-paper": 60, "calibration-recolour-paper": 75, "slider-paper": 2}
    assert build_minutes(calibrated, jobs=2) == pytest.approx((6 + 1068 + 708 + 75 + 2 + 230 + 18) / 60)


def test_identity_gap_pairs_gamma_1_with_the_baselines_best_strength_per_case():
    # [seeds, values, cases]; the baseline's mean curve peaks at strength 0.5 (0.6 against 0.575 at 1)
    flexip = np.array([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.6, 0.7, 0.2]],
                       [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.8, 0.5, 0.4]]])
    baseline = np.array([[[0.1, 0.1, 0.1], [0.7, 0.6, 0.3], [0.5, 0.5, 0.5]],
                         [[0.1, 0.1, 0.1], [0.9, 0.4, 0.7], [0.7, 0.6, 0.65]]])
    gap = identity_gap({FLEXIP: {"identity": flexip}, BASELINE: {"identity": baseline}}, [0.0, 0.5, 1.0])
    per_case = np.array([0.7 - 0.8, 0.6 - 0.5, 0.3 - 0.5])  # FlexIP at gamma 1 minus strength 0.5, seed means
    assert gap == {"difference": pytest.approx(per_case.mean()), "se": pytest.approx(per_case.std(ddof=1) / 3 ** 0.5),
                   "strength": 0.5}
