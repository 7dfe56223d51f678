"""Smoothness numbers on made-up sweeps: monotone, a step, noisy, flat; and the front's area."""
import math

import pytest

from flexip_core.smoothness import front_area, largest_jump, monotonicity, sweep_smoothness

CONTROLS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_monotone_curves():
    rising = [0.10, 0.14, 0.15, 0.31, 0.32]   # uneven steps, but always up
    assert monotonicity(CONTROLS, rising) == pytest.approx(1.0)
    assert monotonicity(CONTROLS, rising[::-1]) == pytest.approx(-1.0)
    # steps 0.04, 0.01, 0.16, 0.01: mean 0.055, largest 0.16
    assert largest_jump(CONTROLS, rising) == pytest.approx(0.16 / 0.055)
    assert largest_jump(CONTROLS, [0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(1.0)


def test_a_step_puts_all_change_in_one_jump():
    step = [0.2, 0.2, 0.2, 0.8, 0.8]
    assert largest_jump(CONTROLS, step) == pytest.approx(4.0)  # n - 1
    # ranks of the step: 2, 2, 2, 4.5, 4.5 against 1..5: covariance 7.5, variances 10 and 7.5
    assert monotonicity(CONTROLS, step) == pytest.approx(7.5 / math.sqrt(10 * 7.5))


def test_noisy_curve():
    noisy = [0.1, 0.3, 0.2, 0.5, 0.4]
    # rank differences 0, 1, -1, 1, -1: rho = 1 - 6 * 4 / (5 * 24)
    assert monotonicity(CONTROLS, noisy) == pytest.approx(0.8)
    assert largest_jump(CONTROLS, noisy) == pytest.approx(0.3 / 0.175)


def test_flat_curve_has_no_ranks_and_no_jumps():
    flat = [0.4] * 5
    assert math.isnan(monotonicity(CONTROLS, flat))
    assert math.isnan(largest_jump(CONTROLS, flat))


def test_uneven_controls_compare_slopes_and_order_does_not_matter():
    controls = [0.0, 0.1, 1.0]
    values = [0.0, 0.1, 1.0]  # a straight line: every slope is 1
    assert largest_jump(controls, values) == pytest.approx(1.0)
    assert largest_jump([1.0, 0.0, 0.1], [1.0, 0.0, 0.1]) == pytest.approx(1.0)
    assert monotonicity([1.0, 0.0, 0.1], [1.0, 0.0, 0.1]) == pytest.approx(1.0)
    # all the change in the short first step: slope 10 against a mean rate of 1
    assert largest_jump(controls, [0.0, 1.0, 1.0]) == pytest.approx(10.0)


def test_front_area_is_the_dominated_area():
    clip_t = [0.3, 0.2, 0.1, 0.25]
    clip_i = [0.5, 0.8, 0.9, 0.4]   # the last point is dominated by the first
    assert front_area(clip_t, clip_i) == pytest.approx(0.3 * 0.5 + 0.2 * 0.3 + 0.1 * 0.1)
    assert front_area([0.3], [0.5]) == pytest.approx(0.15)
    # from reference (0.1, 0.4): (0.2 x 0.1) + (0.1 x 0.3) + nothing for the point on the reference's edge
    assert front_area(clip_t, clip_i, reference=(0.1, 0.4)) == pytest.approx(0.2 * 0.1 + 0.1 * 0.3)
    assert front_area([-0.2], [0.9]) == 0.0


def test_sweep_smoothness_and_bad_sweeps():
    numbers = sweep_smoothness(CONTROLS, clip_i=[0.5, 0.6, 0.7, 0.8, 0.9], clip_t=[0.3, 0.28, 0.25, 0.2, 0.1])
    assert numbers["rho_clip_i"] == pytest.approx(1.0) and numbers["rho_clip_t"] == pytest.approx(-1.0)
    assert numbers["jump_clip_i"] == pytest.approx(1.0) and numbers["jump_clip_t"] == pytest.approx(0.1 / 0.05)
    assert numbers["front_area"] == pytest.approx(front_area([0.3, 0.28, 0.25, 0.2, 0.1], [0.5, 0.6, 0.7, 0.8, 0.9]))
    with pytest.raises(ValueError, match="control values repeat"):
        monotonicity([0.0, 0.0, 1.0], [1, 2, 3])
    with pytest.raises(ValueError, match=">= 2 control values"):
        largest_jump([0.0], [1.0])
    with pytest.raises(ValueError, match=">= 2 control values"):
        largest_jump([0.0, 1.0], [1.0, 2.0, 3.0])
