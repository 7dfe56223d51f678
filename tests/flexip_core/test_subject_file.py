"""Saved subjects (flexip_core.subject_file): a bit-exact round trip that gives the same P and S,
and each kind of file that must be refused, crafted, refused with its own message before any
tensor is read (where no tensor needs to be read to tell), and never unpickled."""
import dataclasses
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flexip_core import SD15, TINY, FlexIP
from flexip_core import subject_file
from flexip_core.reference import ReferenceFeatures, personalization_tokens, preservation_tokens
from flexip_core.subject_file import (SCHEMA_VERSION, FlexIPSubjectError, load_subject, patch_tokens,
                                      save_subject)
from flexip_core.weights import save_flexip


def features(config, references=2, combine="concat", seed=0):
    g = torch.Generator().manual_seed(seed)
    return ReferenceFeatures(torch.randn(references, config.clip.dim, generator=g),
                             torch.randn(references, patch_tokens(config.dino), config.dino.dim, generator=g), combine)


def saved(tmp_path, config=TINY, name="subject.safetensors", **kwargs):
    path = tmp_path / name
    save_subject(features(config, **kwargs), config, path)
    return path


def crafted(tmp_path, tensors=None, **metadata):
    """A valid tiny subject file's tensors and metadata with the given changes (None removes a key)."""
    good = saved(tmp_path, name="good.safetensors")
    with safe_open(good, "pt") as f:
        meta = f.metadata()
    meta.update(metadata)
    path = tmp_path / "crafted.safetensors"
    save_file({**load_file(good), **(tensors or {})}, path, metadata={k: v for k, v in meta.items() if v is not None})
    return path


@pytest.fixture
def tensor_reads(monkeypatch):
    """The names of the tensors load_subject reads from a file (safe_open's get_tensor, recorded)."""
    reads, real_open = [], subject_file.safe_open

    class Recording:
        def __init__(self, *args):
            self.file = real_open(*args)

        def __enter__(self):
            self.opened = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def get_tensor(self, name):
            reads.append(name)
            return self.opened.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self.opened, name)

    monkeypatch.setattr(subject_file, "safe_open", Recording)
    return reads


def refusal(path, config=TINY):
    with pytest.raises(FlexIPSubjectError) as info:
        load_subject(path, config)
    message = str(info.value)
    assert message.startswith(f"{path.name}: ") and " Fix: " in message
    return message


# --- The round trip. ---

@pytest.mark.parametrize("combine, references", [("average", 3), ("concat", 2), ("average", 1)])
def test_round_trip_is_bit_exact(tmp_path, combine, references):
    reference = features(TINY, references, combine)
    path = tmp_path / "subject.safetensors"
    save_subject(reference, TINY, path)
    loaded = load_subject(path, TINY)
    assert torch.equal(loaded.clip_embeds, reference.clip_embeds)
    assert torch.equal(loaded.dino_patches, reference.dino_patches)
    assert loaded.combine == combine and loaded.clip_embeds.dtype == torch.float32


def test_metadata_records_the_config_and_its_encoders(tmp_path):
    with safe_open(saved(tmp_path, references=3, combine="average"), "pt") as f:
        metadata, names = f.metadata(), sorted(f.keys())
    assert names == ["clip_embeds", "dino_patches"]
    assert metadata == {"format": "flexip-subject", "schema_version": str(SCHEMA_VERSION), "flexip_config": "tiny",
                        "clip": json.dumps(dataclasses.asdict(TINY.clip)),
                        "dino": json.dumps(dataclasses.asdict(TINY.dino)), "references": "3", "combine": "average"}
    assert json.loads(metadata["dino"]) == {"feature": "patch_tokens", "dim": 20, "resolution": 28,
                                            "mean": list(TINY.dino.mean), "std": list(TINY.dino.std)}


@pytest.mark.parametrize("combine", ["average", "concat"])
def test_loaded_subject_gives_the_same_p_and_s(tmp_path, combine):
    torch.manual_seed(0)
    model = FlexIP(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # every parameter random, zero-initialised ones included
            p.copy_(torch.randn_like(p))
    reference = features(TINY, 3, combine, seed=4)
    path = tmp_path / "subject.safetensors"
    save_subject(reference, TINY, path)
    loaded = load_subject(path, TINY)
    text = torch.randn(1, 7, TINY.text_dim)
    with torch.no_grad():
        p, s = preservation_tokens(model.preservation, reference), personalization_tokens(model.personalization, text, reference)
        assert torch.equal(preservation_tokens(model.preservation, loaded), p)
        assert torch.equal(personalization_tokens(model.personalization, text, loaded), s)
        # P and S depend on the features: another subject gives others.
        other = features(TINY, 3, combine, seed=5)
        assert not torch.allclose(preservation_tokens(model.preservation, other), p)
        assert not torch.allclose(personalization_tokens(model.personalization, text, other), s)


def test_saving_never_replaces_a_file(tmp_path):
    path = saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_subject(features(TINY, seed=9), TINY, path)
    assert path.read_bytes() == before


def test_an_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(subject_file, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_subject(features(TINY), TINY, tmp_path / "subject.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_reference_that_does_not_fit_the_config_is_not_saved(tmp_path):
    with pytest.raises(FlexIPSubjectError) as info:
        save_subject(features(TINY), SD15, tmp_path / "subject.safetensors")
    assert "the reference does not fit FlexIP config 'sd15': clip_embeds has shape (2, 16), 2 references need (2, 1024)" in str(info.value)
    assert "Fix: connect the FlexIP file the Reference Encoder used" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --- Refused files, each crafted. ---

def test_subject_of_another_flexip_config(tmp_path, tensor_reads):
    message = refusal(saved(tmp_path, SD15, references=1))
    assert "it was saved for FlexIP config 'sd15'; the connected FlexIP file has config 'tiny'" in message
    assert "Fix: choose a subject saved with a FlexIP 'tiny' file" in message
    assert tensor_reads == []


@pytest.mark.parametrize("which, change, expected", [
    ("dino", {"resolution": 42}, "its DINOv2 features are 'patch_tokens' (20-d) at 42 px"),
    ("dino", {"dim": 24}, "its DINOv2 features are 'patch_tokens' (24-d) at 28 px"),
    ("clip", {"feature": "penultimate_cls"}, "its CLIP features are 'penultimate_cls' (16-d) at 28 px"),
    ("clip", {"mean": (0.5, 0.5, 0.5)}, "its CLIP features are 'image_embeds' (16-d) at 28 px, mean [0.5, 0.5, 0.5]"),
])
def test_subject_of_another_encoder_spec(tmp_path, tensor_reads, which, change, expected):
    """Same config name, other encoder features: as a config edited or trained at another resolution."""
    other = dataclasses.replace(TINY, **{which: dataclasses.replace(getattr(TINY, which), **change)})
    message = refusal(saved(tmp_path, other))
    assert expected in message
    assert "FlexIP config 'tiny' reads" in message and "Fix: encode the subject again" in message
    assert tensor_reads == []


def test_truncated_file(tmp_path):
    good = saved(tmp_path)
    path = tmp_path / "half.safetensors"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    message = refusal(path)
    assert "the file looks truncated or is not a safetensors file" in message
    assert "Fix: copy the file again, or encode the subject again" in message


def test_pickled_subject(tmp_path, unpickling_calls):
    path = tmp_path / "subject.safetensors"
    reference = features(TINY)
    torch.save({"clip_embeds": reference.clip_embeds, "dino_patches": reference.dino_patches}, path)
    message = refusal(path)
    assert "it is a pickled file (.pt/.bin/.ckpt), not a FlexIP subject; FlexIP never unpickles." in message
    assert "import and call" not in message
    assert unpickling_calls == []


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_runs_code_is_named_and_never_run(tmp_path, unpickling_calls, payload, writer):
    code, marker = payload
    path = tmp_path / "subject.safetensors"
    if writer == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump({"clip_embeds": code}, f, protocol=2)
    else:
        torch.save({"clip_embeds": code}, path)
    message = refusal(path)
    assert "Unpickling it would import and call " in message and "conftest.touch, which is how a pickle runs code" in message
    assert "Fix: remove it from models/flexip_subjects" in message
    assert not marker.exists() and unpickling_calls == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf(tmp_path, value):
    dino = features(TINY).dino_patches.clone()
    dino[1, 3, 5] = value
    message = refusal(crafted(tmp_path, {"dino_patches": dino}))
    assert "dino_patches hold NaN or Inf values; the file is damaged" in message
    assert "clip_embeds" not in message


@pytest.mark.parametrize("tensors, expected", [
    ({"dino_patches": torch.zeros(2, 4, 21)}, "dino_patches has shape (2, 4, 21), 2 references need (2, 4, 20)"),
    ({"dino_patches": torch.zeros(2, 9, 20)}, "dino_patches has shape (2, 9, 20), 2 references need (2, 4, 20)"),
    ({"clip_embeds": torch.zeros(2, 17)}, "clip_embeds has shape (2, 17), 2 references need (2, 16)"),
    ({"clip_embeds": torch.zeros(3, 16)}, "clip_embeds has shape (3, 16), 2 references need (2, 16)"),
    ({"clip_embeds": torch.zeros(16)}, "clip_embeds has shape (16,), 2 references need (2, 16)"),
    ({"clip_embeds": torch.zeros(2, 16, dtype=torch.float16)}, "clip_embeds is 'F16', a subject's features are float32"),
    ({"clip_embeds": torch.zeros(2, 16, dtype=torch.int32)}, "clip_embeds is 'I32', a subject's features are float32"),
    ({"extra": torch.zeros(1)}, "it holds the tensors ['clip_embeds', 'dino_patches', 'extra'], a subject holds exactly"),
])
def test_wrong_tensors(tmp_path, tensor_reads, tensors, expected):
    message = refusal(crafted(tmp_path, tensors))
    assert "its tensors do not fit FlexIP config 'tiny': " + expected in message
    assert tensor_reads == []


def test_missing_tensor(tmp_path, tensor_reads):
    good = saved(tmp_path, name="good.safetensors")
    with safe_open(good, "pt") as f:
        metadata = f.metadata()
    path = tmp_path / "one.safetensors"
    save_file({"clip_embeds": load_file(good)["clip_embeds"]}, path, metadata=metadata)
    assert "it holds the tensors ['clip_embeds'], a subject holds exactly clip_embeds, dino_patches" in refusal(path)
    assert tensor_reads == []


def test_newer_schema(tmp_path, tensor_reads):
    message = refusal(crafted(tmp_path, schema_version=str(SCHEMA_VERSION + 1), flexip_config="stored elsewhere"))
    assert f"saved by a newer comfyui-flexip (subject schema {SCHEMA_VERSION + 1}; this version reads up to 1)" in message
    assert "Fix: update the pack, or encode the subject again" in message
    assert tensor_reads == []


@pytest.mark.parametrize("metadata, expected", [
    ({"schema_version": None}, "its metadata is damaged (schema_version: KeyError"),
    ({"schema_version": "one"}, "its metadata is damaged (schema_version: ValueError"),
    ({"schema_version": "0"}, "its metadata is damaged (schema_version 0; versions start at 1)"),
    ({"flexip_config": None}, "its metadata is damaged (flexip_config: KeyError"),
    ({"dino": None}, "its metadata is damaged (dino: KeyError"),
    ({"dino": "{not json"}, "its metadata is damaged (dino: JSONDecodeError"),
    ({"clip": '{"feature": "image_embeds", "dim": NaN}'}, "(clip: ValueError: 'holds NaN, which is not a number')"),
    ({"clip": "[1, 2]"}, "(clip: ValueError: 'a JSON object is needed, not list')"),
    ({"clip": '{"x": "' + "a" * 2000 + '"}'}, "(clip: ValueError: '2,009 characters, an encoder spec takes at most 1,024')"),
    ({"references": None}, "its metadata is damaged (references: KeyError"),
    ({"references": "2.5"}, "its metadata is damaged (references: ValueError"),
    ({"references": "0"}, "its metadata claims 0 references; a subject has 1 to 256"),
    ({"references": "100000"}, "its metadata claims 100000 references; a subject has 1 to 256"),
    ({"combine": "median"}, "its combine is 'median', not one of average, concat"),
])
def test_damaged_metadata(tmp_path, tensor_reads, metadata, expected):
    message = refusal(crafted(tmp_path, **metadata))
    assert expected in message and "Fix: encode the subject again" in message
    assert tensor_reads == []


def test_metadata_and_tensors_disagree_on_the_count(tmp_path, tensor_reads):
    message = refusal(crafted(tmp_path, references="3"))
    assert "clip_embeds has shape (2, 16), 3 references need (3, 16)" in message
    assert tensor_reads == []


def test_a_flexip_weight_file_is_not_a_subject(tmp_path):
    path = tmp_path / "flexip.safetensors"
    save_flexip(FlexIP(TINY), path)
    message = refusal(path)
    assert "this is a FlexIP weight file, not a saved subject" in message
    assert "Fix: put it in models/flexip and load it with FlexIP Loader" in message


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, path, metadata={"ss_network_dim": "4"})
    message = refusal(path)
    assert "not a FlexIP subject (its metadata has no format=flexip-subject); it holds 1 tensors, e.g. lora_unet_down.alpha" in message
    assert "Fix: choose a file saved by FlexIP Save Subject" in message
