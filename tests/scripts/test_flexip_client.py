"""The API client's workflow overrides, on the shipped API workflows (no server needed)."""
import json
from pathlib import Path

import pytest

from flexip_client import nodes_of, override

API = Path(__file__).resolve().parents[2] / "example_workflows" / "api"


def load(name):
    return json.loads((API / name).read_text())


def test_overrides_reach_the_right_nodes():
    original = load("flexip_basic_api.json")
    models = {"checkpoint": "a.safetensors", "clip_vision": "h.safetensors", "dino": "d.safetensors", "flexip": "f.safetensors"}
    prompt = override(original, image="ref.png", prompt_text="a cat", gamma=0.3, seed=9, models=models, size=128, steps=3)
    assert prompt["4"]["inputs"]["image"] == "ref.png"
    assert prompt["2"]["inputs"]["text"] == "a cat" and prompt["3"]["inputs"]["text"] == original["3"]["inputs"]["text"]
    assert prompt["11"]["inputs"]["gamma"] == 0.3
    assert prompt["13"]["inputs"]["seed"] == 9 and prompt["13"]["inputs"]["steps"] == 3
    assert prompt["12"]["inputs"]["width"] == prompt["12"]["inputs"]["height"] == 128
    assert prompt["1"]["inputs"]["ckpt_name"] == "a.safetensors"
    assert prompt["5"]["inputs"]["clip_name"] == "h.safetensors" and prompt["6"]["inputs"]["clip_name"] == "d.safetensors"
    assert prompt["7"]["inputs"]["flexip_name"] == "f.safetensors"
    assert original == load("flexip_basic_api.json"), "override must not change its input"


def test_no_overrides_is_a_copy():
    original = load("flexip_gamma_sweep_api.json")
    assert override(original) == original


def test_sweep_gammas_are_all_set_and_missing_nodes_are_named():
    prompt = override(load("flexip_gamma_sweep_api.json"), gamma=0.8)
    assert {n["inputs"]["gamma"] for n in nodes_of(prompt, "FlexIPGatedApply")} == {0.8}
    with pytest.raises(KeyError, match="titled 'Positive'"):
        override({"1": {"class_type": "KSampler", "inputs": {}}}, prompt_text="x")
