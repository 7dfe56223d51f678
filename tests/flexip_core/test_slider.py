import math

import numpy as np
import pytest
import torch

from flexip_core import TINY, FlexIP
from flexip_core.slider import (METADATA_KEY, MappedSchedule, blend_weight, save_with_slider_exponent,
                                slider_exponent)
from flexip_core.weights import load_flexip, read_flexip_header, save_flexip


def test_a_file_without_the_key_has_the_papers_map():
    assert slider_exponent({"format": "flexip"}) == 1.0
    assert blend_weight(0.3, 1.0) == 0.3


@pytest.mark.parametrize("text, value", [("2", 2.0), ("0.25", 0.25), ("4.0", 4.0), ("1.75", 1.75)])
def test_stored_exponents_in_range_are_read(text, value):
    assert slider_exponent({METADATA_KEY: text}) == value


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "4.5", "0.2", "two", "", "1e400"])
def test_a_bad_exponent_is_refused_naming_the_key_and_the_range(text):
    with pytest.raises(ValueError, match=f"{METADATA_KEY}.*from 0.25 to 4.0"):
        slider_exponent({METADATA_KEY: text}, "model.safetensors")


def test_blend_weight_of_numbers_tensors_and_arrays():
    assert blend_weight(0.2, 2.0) == pytest.approx(0.04, abs=1e-15)
    assert blend_weight(0.0, 3.0) == 0.0 and blend_weight(1.0, 3.0) == 1.0  # the ends stay
    gammas = torch.tensor([0.0, 0.2, 0.9], dtype=torch.float64)
    assert torch.equal(blend_weight(gammas, 1.5), torch.tensor([0.0, 0.2 ** 1.5, 0.9 ** 1.5], dtype=torch.float64))
    np.testing.assert_allclose(blend_weight(np.array([0.5, 0.8]), 2.5), [0.5 ** 2.5, 0.8 ** 2.5], rtol=1e-15)


def test_mapped_schedule_maps_each_gamma_it_reads():
    calls = []

    def schedule(sigma, block):
        calls.append((sigma, block))
        return 0.2 if block == "input" else 0.7

    mapped = MappedSchedule(schedule, 2.0)
    assert mapped(3.0, "input") == pytest.approx(0.04, abs=1e-15)
    assert mapped(1.0, "output") == pytest.approx(0.49, abs=1e-15)
    assert calls == [(3.0, "input"), (1.0, "output")]


def test_save_with_slider_exponent_keeps_the_tensors_and_the_other_metadata(tmp_path):
    torch.manual_seed(0)
    model = FlexIP(TINY)
    source, target = tmp_path / "trained.safetensors", tmp_path / "calibrated.safetensors"
    save_flexip(model, source, {"training": '{"steps": 3}'})
    save_with_slider_exponent(source, target, 2.25)
    _, metadata = read_flexip_header(target)
    assert slider_exponent(metadata) == 2.25 and metadata["training"] == '{"steps": 3}'
    assert slider_exponent(read_flexip_header(source)[1]) == 1.0  # the source is left as it was
    before, after = load_flexip(source).state_dict(), load_flexip(target).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("exponent", [0.0, 5.0, math.nan])
def test_save_with_slider_exponent_refuses_an_exponent_out_of_range(tmp_path, exponent):
    source = tmp_path / "trained.safetensors"
    save_flexip(FlexIP(TINY), source)
    with pytest.raises(ValueError, match="from 0.25 to 4.0"):
        save_with_slider_exponent(source, tmp_path / "out.safetensors", exponent)
    assert not (tmp_path / "out.safetensors").exists()
