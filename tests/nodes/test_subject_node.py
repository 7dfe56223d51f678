"""SaveSubject and LoadSubject as ComfyUI runs them: the folder they share, file names that never
overwrite, the dropdown, the P and S a loaded subject gives through the adapter nodes (a tiny random
FlexIP: the node glue does not depend on the config), and refusals that name node, input and fix."""
import os

import pytest
import torch

from flexip_core import COND, SD15, TINY, FlexIP
from flexip_core.reference import ReferenceFeatures
from flexip_core.subject_file import patch_tokens, save_subject


def features(config, references=2, combine="concat", seed=0):
    g = torch.Generator().manual_seed(seed)
    return ReferenceFeatures(torch.randn(references, config.clip.dim, generator=g),
                             torch.randn(references, patch_tokens(config.dino), config.dino.dim, generator=g), combine)


@pytest.fixture(scope="module")
def flexip(pack):
    """FlexIP(tiny) with every parameter random (zero-initialised ones too), so a swap shows."""
    torch.manual_seed(0)
    model = FlexIP(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return pack.nodes.managed.ManagedFlexIP(model)


@pytest.fixture
def folder(pack, tmp_path, monkeypatch):
    """flexip_subjects pointed at an empty temporary folder (and a second one, as extra_model_paths.yaml
    would add), with folder_paths' file list cache emptied."""
    import folder_paths
    first, second = tmp_path / "subjects", tmp_path / "extra_subjects"
    second.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "flexip_subjects", ([str(first), str(second)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return first


def save(pack, flexip, reference, prefix="subject"):
    out = pack.nodes.subject.SaveSubject().save(flexip, reference, prefix)
    assert out["result"] == (reference,)  # passed on unchanged
    (name,) = out["ui"]["subject_name"]
    return name


def dropdown(pack):
    return pack.nodes.subject.LoadSubject.INPUT_TYPES()["required"]["subject_name"][0]


def test_registered_with_a_model_folder_and_tooltips(pack):
    import folder_paths
    paths, extensions = folder_paths.folder_names_and_paths["flexip_subjects"]
    assert os.path.join(folder_paths.models_dir, "flexip_subjects") in paths and extensions == {".safetensors"}
    for key, display in (("FlexIPSaveSubject", "FlexIP Save Subject"), ("FlexIPLoadSubject", "FlexIP Load Subject")):
        node = pack.NODE_CLASS_MAPPINGS[key]
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[key] == display and node.CATEGORY == "FlexIP" and node.DESCRIPTION
        for name, (_, options) in node.INPUT_TYPES()["required"].items():
            assert options.get("tooltip"), f"{key}.{name}"
        assert len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES) == 1 and node.RETURN_TYPES == ("FLEXIP_REFERENCE",)
    assert pack.NODE_CLASS_MAPPINGS["FlexIPSaveSubject"].OUTPUT_NODE is True


@torch.no_grad()
@pytest.mark.parametrize("combine", ["average", "concat"])
def test_loaded_subject_gives_the_encoders_p_and_s(pack, flexip, folder, combine):
    reference = features(TINY, 3, combine)
    name = save(pack, flexip, reference)
    assert name == "subject_00001.safetensors" and (folder / name).is_file()
    assert name in dropdown(pack)
    (loaded,) = pack.nodes.subject.LoadSubject().load(flexip, name)
    assert loaded.combine == combine
    prompt = [[torch.randn(1, 77, TINY.text_dim, generator=torch.Generator().manual_seed(1)), {}]]

    def p_and_s(subject):
        (p,) = pack.nodes.adapters.PreservationAdapter().apply(flexip, subject)
        (s,) = pack.nodes.adapters.PersonalizationAdapter().apply(flexip, subject, prompt)
        return p, s

    (p, s), (p_loaded, s_loaded) = p_and_s(reference), p_and_s(loaded)
    for kind in p:  # COND and UNCOND
        assert torch.equal(p_loaded[kind], p[kind]) and torch.equal(s_loaded[kind], s[kind])
    p_other, _ = p_and_s(features(TINY, 3, combine, seed=1))
    assert not torch.allclose(p_other[COND], p[COND])  # the tokens depend on the subject


def test_counters_never_overwrite(pack, flexip, folder):
    assert [save(pack, flexip, features(TINY, seed=i)) for i in range(2)] == [
        "subject_00001.safetensors", "subject_00002.safetensors"]
    # The next counter follows the highest of this prefix; other prefixes and names do not count.
    for other in ("subject_00007.safetensors", "subjectX_00009.safetensors", "subject_00010_old.safetensors"):
        save_subject(features(TINY, seed=7), TINY, folder / other)
    assert save(pack, flexip, features(TINY, seed=3)) == "subject_00008.safetensors"
    assert save(pack, flexip, features(TINY, seed=4), "cats/tabby") == "cats/tabby_00001.safetensors"
    assert {"subject_00008.safetensors", "cats/tabby_00001.safetensors"} <= set(dropdown(pack))


def test_a_counter_taken_meanwhile_is_skipped(pack, flexip, folder, monkeypatch):
    """Another save takes the counter between the listing and the write: the file is kept, the next is used."""
    save(pack, flexip, features(TINY, seed=1))
    before = (folder / "subject_00001.safetensors").read_bytes()
    monkeypatch.setattr(pack.nodes.subject, "first_free_counter", lambda *args: 1)
    assert save(pack, flexip, features(TINY, seed=2)) == "subject_00002.safetensors"
    assert (folder / "subject_00001.safetensors").read_bytes() == before


BAD_PREFIXES = {  # prefix -> the start of the problem (flexip_core/test_file_names.py checks whole messages)
    "../escape": "'../escape' is not a file name inside the subjects folder",
    "/tmp/abs": "'/tmp/abs' is not a file name inside the subjects folder",
    "cats/../../escape": "'cats/../../escape' is not a file name inside the subjects folder",
    "": "'' is empty.",
    "   ": "'   ' is empty.",
    ".": "'.' is not a file name inside the subjects folder",
    "a" * 300: f"{'a' * 57!r}... (300 characters) is too long: the file name would be 318 bytes",
    "a\x00b": "'a\\x00b' has a control character ('\\x00' at position 2)",
    "cats\x1b/tabby": "'cats\\x1b/tabby' has a control character ('\\x1b' at position 5)",
    "CON/tabby": "'CON/tabby': the folder name 'CON' is a device name on Windows",
    "nul.tabby": "'nul.tabby': the file name 'nul.tabby_00001.safetensors' is a device name on Windows",
    "cats./tabby": "'cats./tabby': the folder name 'cats.' ends with a dot",
    "cats /tabby": "'cats /tabby': the folder name 'cats ' ends with a space",
    "c:tabby": "'c:tabby' has ':' (position 2), which Windows does not allow",
}


@pytest.mark.parametrize("prefix", BAD_PREFIXES, ids=lambda p: repr(p[:20]))
def test_bad_prefix_is_refused_by_name_and_writes_nothing(pack, flexip, folder, prefix):
    expected = f"FlexIPSaveSubject, input 'filename_prefix': {BAD_PREFIXES[prefix]}"
    with pytest.raises(ValueError) as refusal:
        save(pack, flexip, features(TINY), prefix)
    assert str(refusal.value).startswith(expected) and " Fix: " in str(refusal.value)
    # The same message when the prompt is queued (a typed prefix), before anything runs.
    assert pack.nodes.subject.SaveSubject.VALIDATE_INPUTS(prefix) == str(refusal.value)
    assert [p.name for p in folder.parent.rglob("*")] == ["extra_subjects"]  # no file, no folder


def test_a_linked_prefix_is_checked_when_saving(pack):
    # ComfyUI passes a linked input to VALIDATE_INPUTS as None; save() checks it (above).
    assert pack.nodes.subject.SaveSubject.VALIDATE_INPUTS(None) is True
    assert pack.nodes.subject.SaveSubject.VALIDATE_INPUTS("cats/tabby") is True


def test_a_counter_that_no_longer_fits_is_refused(pack, flexip, folder):
    """A 237-byte name fits with the counter 99999 (255 bytes), not with 100000: the save stops there."""
    name = "k" * 237
    assert save(pack, flexip, features(TINY), name) == f"{name}_00001.safetensors"
    save_subject(features(TINY, seed=1), TINY, folder / f"{name}_99999.safetensors")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ValueError) as refusal:
        save(pack, flexip, features(TINY, seed=2), name)
    assert str(refusal.value).startswith(f"FlexIPSaveSubject, input 'filename_prefix': {name[:57]!r}... (237 characters) "
                                         "is too long: the file name would be 256 bytes")
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_reference_for_another_config_is_not_saved(pack, flexip, folder):
    with pytest.raises(ValueError) as refusal:
        save(pack, flexip, features(SD15, 1))
    message = str(refusal.value)
    assert message.startswith("FlexIPSaveSubject, input 'reference': the reference does not fit FlexIP config 'tiny': ")
    assert "Fix: connect the FlexIP file the Reference Encoder used." in message
    assert not list(folder.rglob("*.safetensors"))


def load_refusal(pack, flexip, name):
    with pytest.raises(ValueError) as refusal:
        pack.nodes.subject.LoadSubject().load(flexip, name)
    message = str(refusal.value)
    assert message.startswith(f"FlexIPLoadSubject, input 'subject_name': {name}: ") and " Fix: " in message
    return message


def test_subject_of_another_config_is_refused(pack, flexip, folder):
    folder.mkdir()
    save_subject(features(SD15, 1), SD15, folder / "sd15_cat.safetensors")
    message = load_refusal(pack, flexip, "sd15_cat.safetensors")
    assert "it was saved for FlexIP config 'sd15'; the connected FlexIP file has config 'tiny'" in message
    assert "Fix: choose a subject saved with a FlexIP 'tiny' file" in message


def test_pickled_and_truncated_files_are_refused(pack, flexip, folder):
    save(pack, flexip, features(TINY))
    good = (folder / "subject_00001.safetensors").read_bytes()
    (folder / "half.safetensors").write_bytes(good[: len(good) // 2])
    assert "the file looks truncated or is not a safetensors file" in load_refusal(pack, flexip, "half.safetensors")
    reference = features(TINY)
    torch.save({"clip_embeds": reference.clip_embeds}, folder / "pickled.safetensors")
    assert "it is a pickled file (.pt/.bin/.ckpt), not a FlexIP subject" in load_refusal(pack, flexip, "pickled.safetensors")
    torch.save({"clip_embeds": reference.clip_embeds}, folder / "subject.pt")
    assert "subject.pt" not in dropdown(pack)  # only .safetensors files are listed


def test_missing_file_and_is_changed(pack, flexip, folder):
    load = pack.nodes.subject.LoadSubject
    message = load.VALIDATE_INPUTS("gone.safetensors")
    assert message.startswith("FlexIPLoadSubject, input 'subject_name': no subject 'gone.safetensors' in models/flexip_subjects.")
    assert "Fix: save one with FlexIP Save Subject" in message
    name = save(pack, flexip, features(TINY))
    assert load.VALIDATE_INPUTS(name) is True
    # As ComfyUI calls it: every input, the linked ones as None.
    stamp = load.IS_CHANGED(flexip=None, subject_name=name)
    os.utime(folder / name, (1, 1))  # the file replaced under the same name
    assert load.IS_CHANGED(flexip=None, subject_name=name) != stamp
