"""Saved subjects and the style-transfer workflow through the real ComfyUI server (POST /prompt),
with the shipped API workflows at a 64 px image and 2 steps: a subject saved by one graph and loaded
by another without any image encoder gives the original graph's image bit for bit; the loader's
dropdown lists the new file; a subject of another config is refused by name; the UI-format files
are the API-format graphs."""
import hashlib
import io
import json
import uuid

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import host
from flexip_client import ComfyError, override
from flexip_core import TINY
from flexip_core.reference import ReferenceFeatures
from flexip_core.subject_file import patch_tokens, save_subject

SUBJECTS = host.COMFYUI / "models" / "flexip_subjects"  # the server's default models folder
WORKFLOWS = ("flexip_save_subject", "flexip_load_subject", "flexip_style_transfer")
ENCODING = {"LoadImage", "CLIPVisionLoader", "FlexIPReferenceEncoder"}


def digest(png):
    """Hash of the decoded pixels (the PNG's metadata differs between runs)."""
    return hashlib.sha256(Image.open(io.BytesIO(png)).tobytes()).hexdigest()


def image_of(client, entry):
    (png,) = client.images(entry)
    return png


@pytest.fixture
def subject_files():
    """Names of files the test creates in the server's flexip_subjects folder; removed afterwards."""
    names = []
    yield names
    for name in names:
        (SUBJECTS / name).unlink(missing_ok=True)


def test_object_info_lists_the_subject_nodes_with_tooltips(client):
    info = client.get_json("/object_info")
    for name in ("FlexIPSaveSubject", "FlexIPLoadSubject"):
        node = info[name]
        assert node["category"] == "FlexIP" and node["description"]
        for input_name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert node["output"] == ["FLEXIP_REFERENCE"] and all(node["output_tooltips"])
    assert info["FlexIPSaveSubject"]["output_node"] is True


def test_a_saved_subject_gives_the_original_image_without_encoders(server, client, test_prompt, subject_files):
    prefix = f"test_subject_{uuid.uuid4().hex[:8]}"
    save = test_prompt("flexip_save_subject_api.json", seed=31)
    save["16"]["inputs"]["filename_prefix"] = prefix
    saved = client.run(save)
    (name,) = saved["outputs"]["16"]["subject_name"]
    subject_files.append(name)
    assert name == f"{prefix}_00001.safetensors"
    with safe_open(SUBJECTS / name, "pt") as f:
        metadata = f.metadata()
        assert f.get_slice("clip_embeds").get_shape() == [1, 1024] and f.get_slice("dino_patches").get_shape() == [1, 256, 1024]
    assert (metadata["flexip_config"], metadata["references"], metadata["combine"]) == ("sd15", "1", "average")

    dropdown = client.get_json("/object_info/FlexIPLoadSubject")["FlexIPLoadSubject"]["input"]["required"]["subject_name"][0]
    assert name in dropdown

    load = override(test_prompt("flexip_load_subject_api.json", seed=31), subject=name)
    assert not {node["class_type"] for node in load.values()} & ENCODING
    assert [node["inputs"]["subject_name"] for node in load.values() if node["class_type"] == "FlexIPLoadSubject"] == [name]
    original = digest(image_of(client, client.run(test_prompt(seed=31))))  # the basic graph, no subject file
    assert digest(image_of(client, saved)) == original
    start = len(server.log_text())
    assert digest(image_of(client, client.run(load))) == original
    assert "LoadSubject." not in server.log_text()[start:]  # e.g. "WARNING: LoadSubject.IS_CHANGED() got an unexpected..."


def test_a_subject_of_another_config_is_refused_by_name(client, test_prompt, subject_files):
    name = f"test_tiny_subject_{uuid.uuid4().hex[:8]}.safetensors"
    SUBJECTS.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_subject(ReferenceFeatures(torch.randn(1, TINY.clip.dim, generator=g),
                                   torch.randn(1, patch_tokens(TINY.dino), TINY.dino.dim, generator=g)), TINY, SUBJECTS / name)
    subject_files.append(name)
    with pytest.raises(ComfyError) as failure:
        client.run(override(test_prompt("flexip_load_subject_api.json"), subject=name))
    (error,) = [m[1] for m in failure.value.details["status"]["messages"] if m[0] == "execution_error"]
    assert error["node_type"] == "FlexIPLoadSubject"
    message = error["exception_message"]
    assert message.startswith(f"FlexIPLoadSubject, input 'subject_name': {name}: it was saved for FlexIP config 'tiny'")
    assert "Fix: choose a subject saved with a FlexIP 'sd15' file" in message

    with pytest.raises(ComfyError) as refusal:
        client.queue(override(test_prompt("flexip_load_subject_api.json"), subject="no-such-subject.safetensors"))
    assert "input 'subject_name': no subject 'no-such-subject.safetensors' in models/flexip_subjects. Fix: save one" in \
        json.dumps(refusal.value.details["node_errors"]["17"]["errors"])


@pytest.mark.parametrize("prefix, problem", [
    ("a" * 300, "is too long: the file name would be 318 bytes"),
    ("a\x00b", "has a control character ('\\x00' at position 2)"),
    ("COM1/tabby", "the folder name 'COM1' is a device name on Windows"),
    ("cats./tabby", "the folder name 'cats.' ends with a dot"),
    ("../../../escape", "is not a file name inside the subjects folder"),
])
def test_a_bad_prefix_is_refused_when_queued_and_the_server_keeps_serving(client, test_prompt, prefix, problem):
    before = sorted(SUBJECTS.rglob("*")) if SUBJECTS.exists() else []
    save = test_prompt("flexip_save_subject_api.json")
    save["16"]["inputs"]["filename_prefix"] = prefix
    with pytest.raises(ComfyError) as refusal:
        client.queue(save)
    (error,) = refusal.value.details["node_errors"]["16"]["errors"]
    assert error["details"].startswith("filename_prefix - FlexIPSaveSubject, input 'filename_prefix': ")
    assert problem in error["details"]
    assert " Fix: " in error["details"]
    assert (sorted(SUBJECTS.rglob("*")) if SUBJECTS.exists() else []) == before
    assert client.get_json("/queue")["queue_pending"] == []  # refused before queueing
    assert "FlexIPSaveSubject" in client.get_json("/object_info/FlexIPSaveSubject")  # still serving


def test_style_transfer_workflow(client, test_prompt):
    """The shipped graph runs; the style image goes in through the LoadImage the client overrides,
    the content through the prompt titled Positive, at the gamma and strength the README gives."""
    prompt = test_prompt("flexip_style_transfer_api.json", seed=41)
    (load_image,) = [k for k, n in prompt.items() if n["class_type"] == "LoadImage"]
    assert prompt[load_image]["_meta"]["title"] == "Style Reference"
    assert prompt["8"]["inputs"]["image"] == [load_image, 0]
    (positive,) = [k for k, n in prompt.items() if n.get("_meta", {}).get("title") == "Positive"]
    assert prompt["10"]["inputs"]["positive"] == prompt["13"]["inputs"]["positive"] == [positive, 0]
    assert (prompt["11"]["inputs"]["gamma"], prompt["11"]["inputs"]["strength"]) == (0.25, 0.8)

    # Where override() puts the style image and the content prompt.
    overridden = override(prompt, image="style.png", prompt_text="a lighthouse on a cliff, painting")
    assert overridden[load_image]["inputs"]["image"] == "style.png"
    assert overridden[positive]["inputs"]["text"] == "a lighthouse on a cliff, painting"
    # It runs with the test's reference image in that LoadImage (the shipped file name is not on the server).
    assert Image.open(io.BytesIO(image_of(client, client.run(prompt)))).size == (64, 64)


def api_from_ui(ui, info):
    """The API prompt a UI-format workflow gives, by the frontend's rule: linked inputs from the
    links, widget values in the order of the node's inputs (a seed's control and LoadImage's upload
    button take a value each); Notes are not sent."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] == "Note":
            continue
        spec, order = info[node["type"]]["input"], info[node["type"]]["input_order"]
        linked = {s["name"]: [str(links[s["link"]][1]), links[s["link"]][2]] for s in node["inputs"] if s["link"] is not None}
        values, inputs = iter(node.get("widgets_values", [])), {}
        for section in ("required", "optional"):
            for name in order.get(section, []):
                kind, options = spec[section][name][0], (spec[section][name][1:] or [{}])[0]
                if name in linked:
                    inputs[name] = linked[name]
                elif isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                    inputs[name] = next(values)
                    for extra in ("control_after_generate", "image_upload"):
                        if options.get(extra):
                            next(values)
        assert next(values, None) is None, f"node {node['id']} has widget values left over"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   **({"_meta": {"title": node["title"]}} if "title" in node else {})}
    return prompt


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_is_the_api_workflow(client, name):
    info = client.get_json("/object_info")
    ui = json.loads((host.REPO / "example_workflows" / f"{name}.json").read_text())
    api = json.loads((host.REPO / "example_workflows" / "api" / f"{name}_api.json").read_text())
    assert ui["version"] == 0.4 and api_from_ui(ui, info) == api
    assert name in client.get_json("/api/workflow_templates")[host.PACK_LINK.name]
