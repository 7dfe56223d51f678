"""The slider's calibration (benchmarks/nano/calibrate.py): the fit on known curves, and the cases it reads."""
import numpy as np
import pytest

from benchmarks.nano import calibrate, world
from benchmarks.nano.recolour import RecolourCase
from flexip_core.smoothness import largest_jump

SLIDER = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
WEIGHTS = np.asarray(calibrate.BLEND_WEIGHTS)


def test_a_curve_linear_in_the_blend_weight_keeps_the_papers_map():
    k, worst = calibrate.fit_exponent(WEIGHTS, {"scene": 0.3 + 0.4 * WEIGHTS}, SLIDER)
    assert k == 1.0 and worst[1.0] == pytest.approx(1.0)
    assert all(worst[e] > 1.0 for e in calibrate.EXPONENTS[1:])


def test_a_front_loaded_curve_gets_the_exponent_that_spreads_it():
    # identity = w^(1/2) at the swept weights: read at gamma^2 (linear interpolation between the swept weights)
    # its steps are the most even of the candidates; k = 1 puts 45% of the rise in the first step.
    k, worst = calibrate.fit_exponent(WEIGHTS, {"scene": np.sqrt(WEIGHTS)}, SLIDER)
    reference = {e: largest_jump(SLIDER, np.interp(np.asarray(SLIDER) ** e, WEIGHTS, np.sqrt(WEIGHTS)))
                 for e in calibrate.EXPONENTS}
    assert worst == pytest.approx(reference)
    assert k == min(calibrate.EXPONENTS, key=lambda e: (reference[e], e)) and k > 1.5
    assert worst[1.0] == pytest.approx(np.sqrt(0.2) / 0.2)  # the first step over the mean step, 2.24


def test_the_worse_case_set_decides_and_a_tie_goes_to_the_smaller_exponent():
    linear, front_loaded = 0.4 * WEIGHTS, np.sqrt(WEIGHTS)
    k_both, worst_both = calibrate.fit_exponent(WEIGHTS, {"scene": linear, "recolour": front_loaded}, SLIDER)
    _, worst_linear = calibrate.fit_exponent(WEIGHTS, {"scene": linear}, SLIDER)
    _, worst_front = calibrate.fit_exponent(WEIGHTS, {"recolour": front_loaded}, SLIDER)
    assert worst_both == pytest.approx({e: max(worst_linear[e], worst_front[e]) for e in calibrate.EXPONENTS})
    assert 1.0 < k_both
    # flat curves have no jump (NaN): every candidate ties, and the paper's map stays
    assert calibrate.fit_exponent(WEIGHTS, {"scene": np.full(len(WEIGHTS), 0.5)}, SLIDER)[0] == 1.0


def test_calibration_cases_are_training_subjects_never_the_evaluations():
    training, held_out = world.split()
    scene = calibrate.calibration_cases(48, "scene")
    recolour = calibrate.calibration_cases(48, "recolour")
    subjects = [c.subject for c in scene]
    assert len(set(subjects)) == 48 and set(subjects) <= set(training) and not set(subjects) & set(held_out)
    assert [c.subject for c in recolour] == subjects and all(isinstance(c, RecolourCase) for c in recolour)
    # the evaluation's scenes are drawn with another seed
    evaluation = world.evaluation_cases(training[::calibrate.SUBJECT_STRIDE][:48], 1)
    assert [c.reference_scene for c in evaluation] != [c.reference_scene for c in scene]
