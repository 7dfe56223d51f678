"""FlexIPConfig.from_dict: a weight file's config is untrusted input, checked field by field
before anything is built (the loader wraps the ValueError in its FlexIPWeightError)."""
import copy
import dataclasses
import json
import math

import pytest
import torch

from flexip_core import SD15, TINY, FlexIP
from flexip_core.config import MAX_PARAMETERS, FlexIPConfig, parameter_count


def tiny_dict(**changes):
    """TINY as its weight file stores it (JSON types: lists, floats), with top-level changes."""
    return {**json.loads(json.dumps(TINY.to_dict())), **changes}


def refused(d):
    with pytest.raises(ValueError) as info:
        FlexIPConfig.from_dict(d)
    return str(info.value)


@pytest.mark.parametrize("config", [TINY, SD15], ids=lambda c: c.name)
def test_stored_configs_round_trip(config):
    restored = FlexIPConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.clip.mean, tuple) and all(type(x) is float for x in restored.clip.mean)
    assert all(type(key) is tuple and type(inner) is int for key, inner in restored.layers)
    assert FlexIPConfig.from_dict(config.to_dict()) == config  # the Python form (tuples) too


@pytest.mark.parametrize("field, value, expected", [
    ("depth", 100_000_000, "config.depth is 100000000; it must be an integer from 1 to 64"),
    ("depth", 0, "config.depth is 0; it must be an integer from 1 to 64"),
    ("width", -32, "config.width is -32; it must be an integer from 1 to 8192"),
    ("width", "32", "config.width is '32'; it must be an integer from 1 to 8192"),
    ("heads", True, "config.heads is True; it must be an integer from 1 to 128"),  # bool is an int in Python
    ("heads", 4.0, "config.heads is 4.0; it must be an integer from 1 to 128"),
    ("ff_mult", None, "config.ff_mult is None; it must be an integer from 1 to 16"),
    ("num_latent_queries", 1025, "config.num_latent_queries is 1025; it must be an integer from 1 to 1024"),
    ("num_clip_tokens", [2], "config.num_clip_tokens is [2]; it must be an integer from 1 to 1024"),
    ("text_dim", 8193, "config.text_dim is 8193; it must be an integer from 1 to 8192"),
    ("context_dim", 0, "config.context_dim is 0; it must be an integer from 1 to 8192"),
    ("name", "", "config.name is ''; it must be a text of 1 to 64 characters"),
    ("name", 15, "config.name is 15; it must be a text of 1 to 64 characters"),
    ("injection", None, "config.injection is None; it must be a text of 1 to 64 characters"),
])
def test_bad_top_level_field(field, value, expected):
    assert refused(tiny_dict(**{field: value})) == expected


def test_heads_must_divide_width():
    assert refused(tiny_dict(width=30, heads=4)) == "config.heads (4) must divide config.width (30)"


def test_long_values_are_cut_in_messages():
    message = refused(tiny_dict(name="x" * 10_000))
    assert "it must be a text of 1 to 64 characters" in message and len(message) < 200


@pytest.mark.parametrize("raw, expected", [
    ([1, 2], "config must be a JSON object, not list"),
    ("tiny", "config must be a JSON object, not str"),
    (None, "config must be a JSON object, not NoneType"),
])
def test_config_must_be_an_object(raw, expected):
    assert refused(raw) == expected


def test_missing_and_unknown_fields():
    d = tiny_dict(dropout=0.1, extra=1)
    del d["heads"], d["layers"]
    assert refused(d) == "config.heads, config.layers missing; config.dropout, config.extra unknown"
    assert refused({**tiny_dict(), 7: 1}) == "config.7 unknown"


@pytest.mark.parametrize("encoder, change, expected", [
    ("clip", {"dim": 0}, "config.clip.dim is 0; it must be an integer from 1 to 8192"),
    ("dino", {"dim": False}, "config.dino.dim is False; it must be an integer from 1 to 8192"),
    ("clip", {"resolution": 4096}, "config.clip.resolution is 4096; it must be an integer from 14 to 2048"),
    ("dino", {"resolution": 13}, "config.dino.resolution is 13; it must be an integer from 14 to 2048"),
    ("clip", {"feature": "penultimate"},
     "config.clip.feature is 'penultimate'; this version reads only 'image_embeds'"),
    ("dino", {"feature": 3}, "config.dino.feature is 3; this version reads only 'patch_tokens'"),
    ("clip", {"mean": [0.5, 0.5]}, "config.clip.mean is [0.5, 0.5]; it must be 3 finite numbers"),
    ("dino", {"mean": [0.5, "0.5", 0.5]}, "config.dino.mean is [0.5, '0.5', 0.5]; it must be 3 finite numbers"),
    ("dino", {"mean": [0.5, True, 0.5]}, "config.dino.mean is [0.5, True, 0.5]; it must be 3 finite numbers"),
    ("clip", {"mean": [0.5, math.nan, 0.5]}, "config.clip.mean is [0.5, nan, 0.5]; it must be 3 finite numbers"),
    ("clip", {"std": "0.2"}, "config.clip.std is '0.2'; it must be 3 finite numbers above 0"),
    ("clip", {"std": [0.2, 0.0, 0.2]}, "config.clip.std is [0.2, 0.0, 0.2]; it must be 3 finite numbers above 0"),
    ("dino", {"std": [0.2, math.inf, 0.2]}, "config.dino.std is [0.2, inf, 0.2]; it must be 3 finite numbers above 0"),
])
def test_bad_encoder_field(encoder, change, expected):
    d = tiny_dict()
    d[encoder].update(change)
    assert refused(d) == expected


def test_bad_encoder_object():
    assert refused(tiny_dict(clip=[16, 28])) == "config.clip must be a JSON object, not list"
    d = tiny_dict()
    del d["dino"]["std"]
    d["dino"]["size"] = 3
    assert refused(d) == "config.dino.std missing; config.dino.size unknown"


def test_integer_means_are_read_as_floats():
    d = tiny_dict()
    d["clip"]["mean"] = [0, 1, 0]
    assert FlexIPConfig.from_dict(d).clip.mean == (0.0, 1.0, 0.0)


LAYER_SHAPE = "it must be [[block, index, transformer_index], inner_dim]"


@pytest.mark.parametrize("layers, expected", [
    ("input_1_0", "config.layers is 'input_1_0'; it must be a list of 1 to 128 layers"),
    ([], "config.layers is []; it must be a list of 1 to 128 layers"),
    ([[["input", 1, 0], 16]] * 129, "it must be a list of 1 to 128 layers"),
    ([[["input", 1, 0], 16], [["input", 1], 16]], f"config.layers[1] is [['input', 1], 16]; {LAYER_SHAPE}"),
    ([[["input", 1, 0], 16, 3]], f"config.layers[0] is [['input', 1, 0], 16, 3]; {LAYER_SHAPE}"),
    ([["input", 1, 0]], f"config.layers[0] is ['input', 1, 0]; {LAYER_SHAPE}"),
    ([[["down", 1, 0], 16]], "config.layers[0] block is 'down'; it must be one of input, middle, output"),
    ([[["input", -1, 0], 16]], "config.layers[0] index is -1; it must be an integer from 0 to 127"),
    ([[["input", 1, 1.0], 16]], "config.layers[0] transformer_index is 1.0; it must be an integer from 0 to 127"),
    ([[["input", 1, 0], True]], "config.layers[0] inner_dim is True; it must be an integer from 1 to 8192"),
    ([[["input", 1, 0], 16], [["input", 1, 0], 32]], "config.layers[1] repeats the layer ('input', 1, 0)"),
])
def test_bad_layers(layers, expected):
    assert expected in refused(tiny_dict(layers=layers))


@pytest.mark.parametrize("config", [
    TINY, SD15,
    # Every size different, so a term counted with the wrong size shows.
    dataclasses.replace(TINY, width=24, depth=3, heads=3, ff_mult=3, num_latent_queries=5, num_clip_tokens=7,
                        text_dim=11, context_dim=13,
                        clip=dataclasses.replace(TINY.clip, dim=17), dino=dataclasses.replace(TINY.dino, dim=19),
                        layers=((("input", 1, 0), 23), (("output", 2, 1), 29))),
], ids=["tiny", "sd15", "odd"])
def test_parameter_count_matches_the_built_model(config):
    with torch.device("meta"):
        model = FlexIP(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_too_many_parameters():
    # Every field within its own range, but together 64 blocks of width 8192: far beyond the bound.
    d = tiny_dict(width=8192, depth=64, heads=128, ff_mult=16)
    count = parameter_count(dataclasses.replace(TINY, width=8192, depth=64, heads=128, ff_mult=16))
    assert count > MAX_PARAMETERS
    assert refused(d) == (f"config describes {count:,} parameters; this version loads at most "
                          f"{MAX_PARAMETERS:,}")
    assert parameter_count(SD15) < MAX_PARAMETERS / 10


def test_from_dict_does_not_change_its_argument():
    d = tiny_dict()
    kept = copy.deepcopy(d)
    FlexIPConfig.from_dict(d)
    assert d == kept
