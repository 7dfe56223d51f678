"""FlexIP Score through the real ComfyUI (the session's server: full-shape random-initialised SD1.5,
CLIP ViT-H, DINOv2-L and FlexIP files, 64 px, 2 steps): the shipped flexip_gamma_sweep_score workflow
scores its batched gamma sweep and saves the best image; the node's numbers for the saved PNGs equal
flexip_eval's scoring of the same PNGs with the same model files (its Scorer: ComfyUI's CLIP ViT-H
file read as format "hf-vision", the DINOv2-L file at 224 px, one image per batch, as the node).

HEAVY: flock /tmp/flexip-heavy.lock .host/venv/bin/python -m pytest tests/nodes/test_score_workflow.py
"""
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from flexip_client import ComfyError
from flexip_eval.scoring import Scorer
from flexip_eval.spec import load_spec
from tests.flexip_eval.helpers import BLEND_TEMPLATE, write_spec

GAMMAS = (0.2, 0.6, 0.9)
SCORE, BEST_SAVE = "17", "19"
# Two implementations of each encoder (ComfyUI's, and open_clip's / transformers') in float32 on the CPU.
FLOAT_TOLERANCE = 1e-5


def pixels_digest(png):
    return hashlib.sha256(Image.open(io.BytesIO(png)).convert("RGB").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def sweep(client, test_prompt):
    """The shipped workflow at three gammas: its history entry and the sweep's PNGs in batch order."""
    prompt = test_prompt("flexip_gamma_sweep_score_api.json")
    prompt["16"]["inputs"]["gammas"] = ", ".join(map(str, GAMMAS))
    prompt["12"]["inputs"]["batch_size"] = len(GAMMAS)
    entry = client.run(prompt)
    pngs = [client.image(meta) for meta in entry["outputs"]["15"]["images"]]
    return prompt, entry, pngs


def test_the_sweep_is_scored_and_the_best_image_saved(client, sweep):
    prompt, entry, pngs = sweep
    ui = entry["outputs"][SCORE]
    assert len(pngs) == len(GAMMAS) == len(ui["clip_i"]) == len(ui["dino_i"]) == len(ui["scores"])
    assert "clip_t" not in ui  # no text encoder connected
    # pick_by "weighted sum" with weights 1, 1 (CLIP-T unused without a text encoder)
    assert ui["scores"] == pytest.approx([a + b for a, b in zip(ui["clip_i"], ui["dino_i"])], abs=1e-12)
    best = ui["best_index"][0]
    assert best == int(np.argmax(ui["scores"]))
    (best_png,) = [client.image(meta) for meta in entry["outputs"][BEST_SAVE]["images"]]
    assert pixels_digest(best_png) == pixels_digest(pngs[best])
    text = ui["text"][0]
    assert text.splitlines()[:2] == ["CLIP-I: CLIP ViT-H/14", "DINO-I: DINOv2-L/14 [CLS] at 224 px"]
    assert f"image {best}: CLIP-I {ui['clip_i'][best]:.4f}, DINO-I {ui['dino_i'][best]:.4f}" in text
    assert text.splitlines()[-1] == f"best: image {best} by weighted sum"
    assert entry["outputs"]["18"]  # Preview Any got the text
    assert len(set(ui["clip_i"])) == len(GAMMAS)  # gamma moves the image, so the scores differ


def test_the_numbers_are_the_evaluations_for_the_same_images(client, sweep, model_files, reference_image, tmp_path):
    """The sweep's PNGs loaded back (LoadImage, ImageBatch) and scored by the node, and scored by
    flexip_eval's Scorer from the same files: the same numbers."""
    import random_models
    _, _, pngs = sweep
    names = []
    for i, png in enumerate(pngs):
        path = tmp_path / f"flexip_score_{i}.png"
        path.write_bytes(png)
        names.append(client.upload_image(path))
    reference = tmp_path / "reference.png"
    reference.write_bytes(client.image({"filename": reference_image, "subfolder": "", "type": "input"}))
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": reference_image}},
              "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": model_files["clip_vision"]}},
              "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": model_files["dino"]}}}
    batch = None
    for i, name in enumerate(names):
        prompt[f"i{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if batch is None:
            batch = [f"i{i}", 0]
        else:
            prompt[f"b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": batch, "image2": [f"i{i}", 0]}}
            batch = [f"b{i}", 0]
    prompt["9"] = {"class_type": "FlexIPScore", "inputs": {
        "images": batch, "reference": ["1", 0], "clip_vision": ["2", 0], "dino": ["3", 0], "pick_by": "dino_i",
        "weight_clip_i": 0.2, "weight_dino_i": 1.0, "weight_clip_t": 1.0, "crop": "center", "prompt": ""}}
    ui = client.run(prompt)["outputs"]["9"]
    assert ui["scores"] == ui["dino_i"] and ui["best_index"] == [int(np.argmax(ui["dino_i"]))]

    spec = load_spec(write_spec(tmp_path, subjects=[("subject", reference, ["a photo of the subject on a sunny beach"])],
                                methods={"flexip": {"workflow": str(BLEND_TEMPLATE), "params": {"size": 64}}},
                                controls=GAMMAS))
    out = tmp_path / "out"
    for job, png in zip(spec.jobs(), pngs):
        (out / job.image).parent.mkdir(parents=True, exist_ok=True)
        (out / job.image).write_bytes(png)
    scorer = Scorer({"batch_size": 1, "clip": {"path": str(random_models.clip_vit_h()), "format": "hf-vision"},
                     "dino": {"path": str(random_models.dinov2_large()), "backbone": "dinov2", "resolution": 224}})
    rows = scorer.score(spec, out, progress=False)
    for metric in ("clip_i", "dino_i"):
        ours, theirs = np.array(ui[metric]), np.array([row[metric] for row in rows])
        print(f"{metric}: node {ours.tolist()}, flexip_eval {theirs.tolist()}, "
              f"largest difference {np.abs(ours - theirs).max():.2e}")
        assert ours == pytest.approx(theirs, abs=FLOAT_TOLERANCE, rel=0), metric


def test_a_text_encoder_of_another_clip_is_refused_by_name(client, sweep):
    """The shipped workflow's loaders (cached by the server) and the score node alone, with SD1.5's
    text encoder (CLIP ViT-L's text tower, stored without its projection) as `clip`."""
    prompt = {k: v for k, v in json.loads(json.dumps(sweep[0])).items() if k in ("1", "4", "5", "6", "15")}
    prompt[SCORE] = json.loads(json.dumps(sweep[0][SCORE]))
    prompt[SCORE]["inputs"].update(images=["4", 0], clip=["1", 1])
    prompt["15"]["inputs"]["images"] = ["4", 0]  # a prompt needs an output node besides the failing one
    with pytest.raises(ComfyError, match="FlexIPScore, input 'clip': this text encoder has no text projection"):
        client.run(prompt)
    assert client.get_json("/system_stats")  # the server keeps serving


def test_every_input_and_output_has_a_tooltip(client):
    node = client.get_json("/object_info/FlexIPScore")["FlexIPScore"]
    assert node["display_name"] == "FlexIP Score" and node["category"] == "FlexIP" and node["output_node"]
    for name, spec in {**node["input"]["required"], **node["input"]["optional"]}.items():
        assert spec[1].get("tooltip"), name
    assert len(node["output_tooltips"]) == 4 and all(node["output_tooltips"])
    assert node["output_is_list"] == [False, True, False, False]
