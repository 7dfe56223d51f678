import dataclasses
import json
import pickle
from collections import OrderedDict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flexip_core import SD15, TINY, FlexIP
from flexip_core.weights import (SCHEMA_VERSION, FlexIPWeightError, load_flexip, read_flexip_header,
                                 save_flexip)


def random_model(config, seed=0):
    """Every parameter random, including those initialised to zeros / ones, so a swap shows."""
    torch.manual_seed(seed)
    model = FlexIP(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def saved_tiny(tmp_path):
    """A valid tiny file's (tensors, metadata), for tests to damage and save again."""
    path = tmp_path / "good.safetensors"
    save_flexip(random_model(TINY), path)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    return load_file(path), metadata


def write(tmp_path, tensors, metadata=None, name="bad.safetensors"):
    path = tmp_path / name
    save_file(tensors, path, metadata=metadata)
    return path


def load_error(path):
    with pytest.raises(FlexIPWeightError) as info:
        load_flexip(path)
    message = str(info.value)
    assert path.name in message and str(path) in message  # every message names the file
    return message


def outputs(model):
    torch.manual_seed(1)
    clip, dino = torch.randn(2, TINY.clip.dim), torch.randn(2, 5, TINY.dino.dim)
    text = torch.randn(2, 7, TINY.text_dim)
    p, s = model.preservation(clip, dino), model.personalization(text, clip)
    kv = [t for key, _ in TINY.layers for pair in model.projections[key](p, s) for t in pair]
    return [p, s, *kv, model.gate(torch.tensor([True, False]))]


def test_round_trip_tiny_is_bit_exact(tmp_path):
    model = random_model(TINY)
    path = tmp_path / "tiny.safetensors"
    save_flexip(model, path)
    loaded = load_flexip(path)

    assert loaded.config == TINY
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
        assert restored[key].device.type == "cpu"
    model.eval()
    with torch.no_grad():
        for a, b in zip(outputs(model), outputs(loaded)):
            assert torch.equal(a, b)


def test_round_trip_sd15(tmp_path):
    model = FlexIP(SD15)  # default init is random enough here; the tiny test covers zero-inits
    path = tmp_path / "sd15.safetensors"
    save_flexip(model, path)
    loaded = load_flexip(path)
    assert loaded.config == SD15
    restored = loaded.state_dict()
    assert all(torch.equal(v, restored[k]) for k, v in model.state_dict().items())


def test_metadata_and_header(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_flexip(random_model(TINY), path, extra_metadata={"training_steps": "1200", "dataset": "toy"})
    config, metadata = read_flexip_header(path)
    assert config == TINY
    assert metadata["format"] == "flexip"
    assert metadata["schema_version"] == str(SCHEMA_VERSION) == "1"
    assert metadata["base_model"] == "tiny"
    assert metadata["injection"] == TINY.injection
    assert json.loads(metadata["config"]) == json.loads(json.dumps(TINY.to_dict()))
    assert metadata["training_steps"] == "1200" and metadata["dataset"] == "toy"


def test_extra_metadata_cannot_override_reserved_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved keys \\['format', 'schema_version'\\]"):
        save_flexip(random_model(TINY), tmp_path / "x.safetensors",
                    extra_metadata={"format": "other", "schema_version": "9", "note": "ok"})
    assert not list(tmp_path.iterdir())


def test_truncated_download(tmp_path):
    save_flexip(random_model(TINY), tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    message = load_error(path)
    assert "looks truncated or is not a safetensors file" in message
    assert "download/copy it again" in message


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("<html>404 Not Found</html>")
    assert "looks truncated or is not a safetensors file" in load_error(path)


def ip_adapter_bin(context):
    """IP-Adapter's .bin layout: two state dicts with the real key names; tiny tensors with the
    real context width (768 for SD1.5, 2048 for SDXL) as to_k_ip's second dimension."""
    return {"image_proj": OrderedDict([("proj.weight", torch.zeros(12, 16)), ("proj.bias", torch.zeros(12)),
                                       ("norm.weight", torch.zeros(4)), ("norm.bias", torch.zeros(4))]),
            "ip_adapter": OrderedDict([("1.to_k_ip.weight", torch.zeros(3, context)),
                                       ("1.to_v_ip.weight", torch.zeros(3, context)),
                                       ("3.to_k_ip.weight", torch.zeros(5, context)),
                                       ("3.to_v_ip.weight", torch.zeros(5, context))])}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("context, base", [(768, "SD1.5"), (2048, "SDXL")])
def test_pickled_ip_adapter_bin_is_identified(tmp_path, unpickling_calls, legacy, context, base):
    path = tmp_path / "ip-adapter.bin"
    torch.save(ip_adapter_bin(context), path, _use_new_zipfile_serialization=not legacy)
    message = load_error(path)
    assert f"this is an IP-Adapter file for {base}, not a FlexIP file" in message
    assert "ComfyUI_IPAdapter_plus" in message
    assert "FlexIP needs a FlexIP file trained with this project" in message
    assert unpickling_calls == []


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_state_dict_is_refused(tmp_path, unpickling_calls, legacy):
    path = tmp_path / "flexip.pt"
    torch.save(random_model(TINY).state_dict(), path, _use_new_zipfile_serialization=not legacy)
    message = load_error(path)
    assert "pickled PyTorch file (.bin/.pt/.ckpt), not a FlexIP weight file" in message
    assert ".safetensors files only" in message
    assert unpickling_calls == []


def test_truncated_pickle_is_still_named_a_pickle(tmp_path, unpickling_calls):
    path = tmp_path / "ip-adapter.bin"
    torch.save(ip_adapter_bin(768), path)
    path.write_bytes(path.read_bytes()[:200])
    assert "pickled PyTorch file (.bin/.pt/.ckpt), not a FlexIP weight file" in load_error(path)
    assert unpickling_calls == []


@pytest.mark.parametrize("writer", ["torch.save", "torch.save-legacy", "pickle.dump"])
def test_unsafe_pickle_is_never_unpickled(tmp_path, unpickling_calls, payload, writer):
    code, marker = payload
    path = tmp_path / "model.ckpt"
    if writer == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump({"state": code}, f, protocol=2)
    else:
        torch.save({"state": code}, path, _use_new_zipfile_serialization=writer == "torch.save")
    message = load_error(path)
    assert "pickled file that cannot be read safely: unpickling it would import and call" in message
    assert "conftest.touch" in message  # names the code it would run
    assert ".safetensors files only" in message
    assert not marker.exists()
    assert unpickling_calls == []


@pytest.mark.parametrize("context, base", [(768, "SD1.5"), (2048, "SDXL")])
def test_ip_adapter_safetensors(tmp_path, context, base):
    path = write(tmp_path, {"image_proj.proj.weight": torch.zeros(8, 4),
                            "ip_adapter.1.to_k_ip.weight": torch.zeros(640, context),
                            "ip_adapter.1.to_v_ip.weight": torch.zeros(640, context)})
    message = load_error(path)
    assert f"this is an IP-Adapter file for {base}, not a FlexIP file" in message
    assert "load it with ComfyUI_IPAdapter_plus".lower() in message.lower()
    assert "FlexIP needs a FlexIP file trained with this project" in message
    assert ("SDXL" in message) == (base == "SDXL")


def test_foreign_safetensors(tmp_path):
    path = write(tmp_path, {"model.diffusion_model.out.0.weight": torch.zeros(2),
                            "model.diffusion_model.out.0.bias": torch.zeros(2)}, {"format": "pt"})
    message = load_error(path)
    assert "not a FlexIP weight file" in message
    assert "model.diffusion_model.out.0.weight" in message and "model.diffusion_model.out.0.bias" in message


def test_newer_schema(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    # A future schema may change the config layout: the version must be checked first.
    path = write(tmp_path, tensors, {**metadata, "schema_version": "2", "config": "{new layout"})
    expected = "this file needs a newer comfyui-flexip (file schema 2, this version reads up to 1); update the pack"
    assert expected in load_error(path)
    with pytest.raises(FlexIPWeightError, match="file schema 2"):
        read_flexip_header(path)


def test_unknown_base_model(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    path = write(tmp_path, tensors, {**metadata, "base_model": "sdxl"})
    message = load_error(path)
    assert "made for base model 'sdxl'" in message and "supported: sd15, tiny" in message


def test_unknown_injection(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    config = {**json.loads(metadata["config"]), "injection": "token-concat-v9"}
    path = write(tmp_path, tensors, {**metadata, "config": json.dumps(config)})
    message = load_error(path)
    assert "injection formulation 'token-concat-v9'" in message and "update the pack" in message


def test_damaged_config_metadata(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    path = write(tmp_path, tensors, {**metadata, "config": '{"name": "tiny"'})
    assert "its FlexIP metadata is damaged" in load_error(path)


def test_sdxl_sized_config_claiming_sd15(tmp_path):
    sdxl_like = dataclasses.replace(SD15, text_dim=2048, context_dim=2048)
    metadata = {"format": "flexip", "schema_version": "1", "base_model": "sd15",
                "config": json.dumps(sdxl_like.to_dict()), "injection": sdxl_like.injection}
    path = write(tmp_path, {"gate.alpha_logit": torch.zeros(())}, metadata)
    message = load_error(path)
    assert "claims base model sd15 but its config does not fit" in message
    assert "context_dim is 2048, sd15 has 768" in message and "SDXL" in message


def test_wrong_shape_names_tensor_and_unet_layer(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    tensors["projections.layers.output_11_0.to_k_p.weight"] = torch.zeros(8, TINY.context_dim)
    message = load_error(write(tmp_path, tensors, metadata))
    assert ("projections.layers.output_11_0.to_k_p.weight (UNet output block 11, transformer 0): "
            "file has shape (8, 24), config tiny expects (16, 24)") in message


def test_missing_and_unexpected_tensors(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    del tensors["gate.alpha_logit"]
    del tensors["projections.layers.middle_0_0.to_v_s.weight"]
    tensors["preservation.extra.weight"] = torch.zeros(3)
    message = load_error(write(tmp_path, tensors, metadata))
    assert "gate.alpha_logit: missing from the file" in message
    assert ("projections.layers.middle_0_0.to_v_s.weight (UNet middle block 0, transformer 0): "
            "missing from the file") in message
    assert "preservation.extra.weight: not part of a FlexIP tiny model" in message


def test_long_problem_list_is_cut(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    dropped = [k for k in tensors if k.startswith("projections.")]
    assert len(dropped) == 12
    for key in dropped:
        del tensors[key]
    message = load_error(write(tmp_path, tensors, metadata))
    assert message.count("missing from the file") == 8
    assert "... and 4 more" in message


def test_nan_and_inf_are_refused(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    tensors["preservation.latent_queries"][0, 1, 2] = float("nan")
    tensors["gate.beta_logit"] = torch.tensor(float("inf"))
    message = load_error(write(tmp_path, tensors, metadata))
    assert "NaN or Inf" in message
    assert "preservation.latent_queries" in message and "gate.beta_logit" in message
    assert "gate.alpha_logit" not in message


# --- The config is untrusted input: every field is checked before anything is built. ---

def tiny_with_config(tmp_path, config):
    """TINY's tensors under a replaced config: a dict (top-level changes to TINY's) or raw JSON text."""
    tensors, metadata = saved_tiny(tmp_path)
    if isinstance(config, dict):
        config = json.dumps({**json.loads(metadata["config"]), **config})
    return write(tmp_path, tensors, {**metadata, "config": config})


def config_error(path):
    """The loader's message, which the header reader (which builds nothing) must give too."""
    message = load_error(path)
    with pytest.raises(FlexIPWeightError) as info:
        read_flexip_header(path)
    assert str(info.value) == message
    assert "its FlexIP metadata is damaged or beyond this version's limits: config" in message
    assert "Download the file again, or re-export it with this pack." in message
    return message


def test_huge_depth_is_refused_before_building(tmp_path):
    """1 KB of metadata claiming 100 million blocks: refused from the config alone, in milliseconds
    (the meta device saves tensor memory, not the Python objects of 3 x 10^8 blocks)."""
    path = tiny_with_config(tmp_path, {"depth": 100_000_000})
    assert "config.depth is 100000000; it must be an integer from 1 to 64" in config_error(path)


@pytest.mark.parametrize("field, value", [
    ("width", "32"), ("width", 0), ("heads", -4), ("num_latent_queries", 0),
    ("heads", True), ("heads", 4.0), ("ff_mult", None),
])
def test_wrong_type_or_range(tmp_path, field, value):
    path = tiny_with_config(tmp_path, {field: value})
    assert f"config.{field} is {value!r}; it must be an integer from 1 to" in config_error(path)


def test_heads_not_dividing_width(tmp_path):
    # heads do not change any tensor shape: only the check can tell this file is broken.
    path = tiny_with_config(tmp_path, {"heads": 3})
    assert "config.heads (3) must divide config.width (32)" in config_error(path)


@pytest.mark.parametrize("config, expected", [
    ("[1, 2]", "config must be a JSON object, not list"),
    ('"tiny"', "config must be a JSON object, not str"),
    ("[" * 20_000 + "]" * 20_000, "config JSON is nested too deeply"),
    ('{"depth": 2, "depth": 3}', "config JSON repeats the key 'depth'"),
])
def test_config_json_shapes(tmp_path, config, expected):
    assert expected in config_error(tiny_with_config(tmp_path, config))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_config_json(tmp_path, constant):
    tensors, metadata = saved_tiny(tmp_path)
    config = metadata["config"].replace('"std": [0.26862954', f'"std": [{constant}', 1)
    assert config != metadata["config"]
    message = config_error(write(tmp_path, tensors, {**metadata, "config": config}))
    assert f"config JSON holds {constant}, which is not a number" in message


def test_unknown_and_missing_fields(tmp_path):
    config = {k: v for k, v in json.loads(json.dumps(TINY.to_dict())).items() if k != "ff_mult"}
    path = tiny_with_config(tmp_path, json.dumps({**config, "dropout": 0.1}))
    assert "config.ff_mult missing; config.dropout unknown" in config_error(path)


def test_encoder_mean_of_wrong_length(tmp_path):
    clip = {**json.loads(json.dumps(TINY.to_dict()))["clip"], "mean": [0.5, 0.5]}
    path = tiny_with_config(tmp_path, {"clip": clip})
    assert "config.clip.mean is [0.5, 0.5]; it must be 3 finite numbers" in config_error(path)


@pytest.mark.parametrize("layers, expected", [
    (7, "config.layers is 7; it must be a list of 1 to 128 layers"),
    ([[["input", 1], 16]],
     "config.layers[0] is [['input', 1], 16]; it must be [[block, index, transformer_index], inner_dim]"),
    ([[["input", 1, 0], "16"]], "config.layers[0] inner_dim is '16'; it must be an integer from 1 to 8192"),
])
def test_malformed_layers(tmp_path, layers, expected):
    assert expected in config_error(tiny_with_config(tmp_path, {"layers": layers}))


def test_parameter_bound(tmp_path):
    path = tiny_with_config(tmp_path, {"width": 8192, "depth": 64, "heads": 128, "ff_mult": 16})
    message = config_error(path)
    assert "parameters; this version loads at most 4,000,000,000" in message


def test_giant_config_text(tmp_path):
    """Valid JSON padded to 1 MB: refused by its length before it is parsed."""
    tensors, metadata = saved_tiny(tmp_path)
    config = metadata["config"][:-1] + " " * 1_000_000 + "}"
    message = config_error(write(tmp_path, tensors, {**metadata, "config": config}))
    assert f"config JSON is {len(config):,} characters long; a FlexIP config is at most 65,536" in message


@pytest.mark.parametrize("key, dtype, code", [
    ("gate.alpha_logit", torch.int64, "I64"), ("preservation.latent_queries", torch.bool, "BOOL"),
    ("projections.layers.middle_0_0.to_k_p.weight", torch.uint8, "U8"),
])
def test_integer_and_bool_tensors_are_refused(tmp_path, key, dtype, code):
    tensors, metadata = saved_tiny(tmp_path)
    tensors[key] = torch.zeros(tensors[key].shape, dtype=dtype)
    message = load_error(write(tmp_path, tensors, metadata))
    assert f"tensors that are not floating point: {key} ({code})" in message
    assert "FlexIP tensors are floating point (F16, BF16, F32 or F64) and all of one type" in message


def test_mixed_float_types_are_refused(tmp_path):
    tensors, metadata = saved_tiny(tmp_path)
    tensors["gate.beta_logit"] = tensors["gate.beta_logit"].double()
    message = load_error(write(tmp_path, tensors, metadata))
    assert "its tensors mix float types: F32 (" in message and "F64 (1: gate.beta_logit)" in message
    assert "FlexIP tensors are floating point (F16, BF16, F32 or F64) and all of one type" in message


def test_half_precision_file_loads(tmp_path):
    model = random_model(TINY).half()
    path = tmp_path / "half.safetensors"
    save_flexip(model, path)
    loaded = load_flexip(path)
    assert all(t.dtype == torch.float16 for t in loaded.state_dict().values())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_header_claiming_a_huge_size(tmp_path):
    """A header length of 2^40 bytes in a 16-byte file: safetensors refuses it before reading."""
    path = tmp_path / "huge-header.safetensors"
    path.write_bytes((2 ** 40).to_bytes(8, "little") + b'{"a": 1}')
    assert "looks truncated or is not a safetensors file" in load_error(path)
