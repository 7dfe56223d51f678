"""Bad inputs through the real server's API: each gets ComfyUI's node error naming the node, the
input and the fix, and the next good prompt on the same server succeeds."""
import json
import math

import pytest

import random_models
from flexip_client import ComfyError


def execution_error(entry):
    (error,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    return error


def fails_in(client, prompt, node_type):
    with pytest.raises(ComfyError) as failure:
        client.run(prompt)
    error = execution_error(failure.value.details)
    assert error["node_type"] == node_type
    return error["exception_message"]


def refused(client, prompt):
    with pytest.raises(ComfyError) as refusal:
        client.queue(prompt)
    return refusal.value.details["node_errors"]


@pytest.fixture(autouse=True)
def server_still_serves(client, test_prompt):
    yield
    client.run(test_prompt(seed=1000 + len(client.get_json("/history"))))


def test_clip_and_dino_swapped(client, test_prompt):
    prompt = test_prompt()
    prompt["8"]["inputs"].update(clip_vision=["6", 0], dino=["5", 0])
    message = fails_in(client, prompt, "FlexIPReferenceEncoder")
    assert "input 'clip_vision'" in message and "DINOv2-L/14" in message and "swapped" in message
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in message


def test_dinov2_saved_with_transformers5_names(client, test_prompt):
    prompt = test_prompt()
    prompt["6"]["inputs"]["clip_name"] = random_models.misnamed_dinov2().name
    message = fails_in(client, prompt, "FlexIPReferenceEncoder")
    assert "input 'dino'" in message and "attention.attention.query" in message and "facebook/dinov2-large" in message


def test_missing_flexip_file(client, test_prompt):
    prompt = test_prompt()
    prompt["7"]["inputs"]["flexip_name"] = "no-such-flexip.safetensors"
    errors = refused(client, prompt)
    assert errors["7"]["class_type"] == "FlexIPLoader"
    details = json.dumps(errors["7"]["errors"])
    assert "input 'flexip_name': no file 'no-such-flexip.safetensors' in models/flexip" in details
    assert "Fix: put the FlexIP .safetensors file in ComfyUI/models/flexip" in details


def test_corrupted_flexip_file(client, test_prompt):
    good = random_models.flexip_sd15()
    corrupt = good.with_name("flexip-corrupt-test.safetensors")
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    try:
        prompt = test_prompt()
        prompt["7"]["inputs"]["flexip_name"] = corrupt.name
        message = fails_in(client, prompt, "FlexIPLoader")
        assert "input 'flexip_name'" in message and "truncated" in message
    finally:
        corrupt.unlink()


def test_sdxl_shaped_model(client, test_prompt):
    prompt = test_prompt()
    prompt["90"] = {"class_type": "UNETLoader",
                    "inputs": {"unet_name": random_models.sdxl_shaped_unet().name, "weight_dtype": "default"}}
    prompt["11"]["inputs"]["model"] = ["90", 0]
    message = fails_in(client, prompt, "FlexIPGatedApply")
    assert "input 'model'" in message and "SDXL" in message and "SD1.5 checkpoint" in message


@pytest.mark.parametrize("gamma", [math.nan, 1.5, -0.1])
def test_gamma_out_of_range(client, test_prompt, gamma):
    errors = refused(client, test_prompt(gamma=gamma))
    assert errors["11"]["class_type"] == "FlexIPGatedApply"
    assert "input 'gamma'" in json.dumps(errors["11"]["errors"]) and "Fix: set gamma between 0.0 and 1.0" in json.dumps(errors["11"]["errors"])


def test_empty_image_batch(client, test_prompt):
    prompt = test_prompt()
    prompt["91"] = {"class_type": "FlexIPTestEmptyImageBatch", "inputs": {}}
    prompt["8"]["inputs"]["image"] = ["91", 0]
    message = fails_in(client, prompt, "FlexIPReferenceEncoder")
    assert "input 'image'" in message and "empty" in message
