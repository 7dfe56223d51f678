"""The training command's configuration: every option documented, typos and bad values refused."""
import dataclasses
import subprocess
import sys
import tomllib

import pytest

from flexip_train.__main__ import overrides
from flexip_train.config import SECTIONS, ConfigError, TrainConfig, config_from_dict, load_config, to_toml


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "flexip_train", "--help"], capture_output=True, text=True, check=True).stdout
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in out
        for f in dataclasses.fields(cls):
            assert f"  {f.name} = " in out and f.metadata["help"][:40] in out, f"{name}.{f.name}"


def test_printed_config_loads_back_unchanged(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(to_toml(TrainConfig()))
    assert load_config(path) == TrainConfig()
    assert load_config(path, {"run.max_steps": 7, "optim.lr": 2}).run.max_steps == 7


@pytest.mark.parametrize("data, message", [
    ({"optim": {"lrr": 1e-4}}, "unknown option optim.lrr"),
    ({"runs": {}}, "unknown section"),
    ({"run": {"max_steps": "10"}}, "run.max_steps must be int"),
    ({"run": {"max_steps": True}}, "run.max_steps must be int"),
    ({"data": {"resolution": 500}}, "multiple of 8"),
    ({"gate": {"alpha": 1.0}}, "strictly between 0 and 1"),
    ({"optim": {"mixed_precision": "fp8"}}, "mixed_precision"),
    ({"dropout": {"text": 0.6, "image": 0.6}}, "their sum at most 1"),
    ({"loss": {"subject_weight": 0}}, "loss.subject_weight must be above 0"),
    ({"loss": {"subject_weight": float("nan")}}, "loss.subject_weight must be above 0"),
    ({"data": {"features": "f"}}, "data.features needs the data its features were written for"),
    ({"data": {"shards": "s", "features": "f", "feature_cache": "c"}}, "leave data.feature_cache empty"),
])
def test_bad_options_are_refused_with_their_name(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_set_parses_toml_values():
    assert overrides(["run.max_steps=5", "data.manifests=['a.jsonl']", "run.output_dir=runs/x"]) == {
        "run.max_steps": 5, "data.manifests": ["a.jsonl"], "run.output_dir": "runs/x"}
    with pytest.raises(ConfigError):
        overrides(["max_steps=5"])
    assert tomllib.loads(to_toml(TrainConfig()))["validation"]["gammas"] == [0.0, 0.5, 1.0]
