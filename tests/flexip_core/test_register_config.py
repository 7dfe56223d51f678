"""flexip_core.config.register_config (the miniature registers its nano configuration with it): the
pack's weight loader accepts a file for a research base model once its configuration is registered,
and only then; a shipped configuration cannot be replaced."""
import dataclasses

import pytest

from flexip_core.config import CONFIGS, SD15, TINY, register_config
from flexip_core.model import FlexIP
from flexip_core.weights import FlexIPWeightError, load_flexip, save_flexip


def test_register_config_lets_the_loader_accept_a_research_base_model(tmp_path):
    research = dataclasses.replace(TINY, name="research-test", width=16)
    path = tmp_path / "research.safetensors"
    save_flexip(FlexIP(research), path)
    with pytest.raises(FlexIPWeightError, match="research-test"):
        load_flexip(path)
    try:
        assert register_config(research) is research and register_config(research) is research  # twice: fine
        assert load_flexip(path).config == research
        with pytest.raises(ValueError, match="another configuration named 'research-test'"):
            register_config(dataclasses.replace(research, width=32))
    finally:
        CONFIGS.pop("research-test", None)
    with pytest.raises(ValueError, match="'sd15'"):
        register_config(dataclasses.replace(SD15, width=1024))
    assert CONFIGS["sd15"] is SD15
    with pytest.raises(TypeError):
        register_config(SD15.to_dict())
