"""End-to-end: the shipped API workflows through the real ComfyUI server (POST /prompt), with
full-shape random-initialised model files, at a 64 px image and 2 steps."""
import hashlib
import io
import json
import re

from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]

FLEXIP_NODES = ("FlexIPLoader", "FlexIPReferenceEncoder", "FlexIPSaveSubject", "FlexIPLoadSubject",
                "FlexIPPreservationAdapter", "FlexIPPersonalizationAdapter", "FlexIPGatedApply",
                "FlexIPGammaSchedule", "FlexIPGammaSweep")
SD15_LAYERS = ["input_1_0", "input_2_0", "input_4_0", "input_5_0", "input_7_0", "input_8_0", "middle_0_0"] + [
    f"output_{i}_0" for i in range(3, 12)]


def digest(png):
    """Hash of the decoded pixels (the PNG's metadata differs between runs)."""
    return hashlib.sha256(Image.open(io.BytesIO(png)).tobytes()).hexdigest()


def run_image(client, prompt, workflow=None):
    (png,) = client.images(client.run(prompt, workflow))
    return png


def without_flexip(prompt):
    prompt = json.loads(json.dumps(prompt))
    prompt["13"]["inputs"]["model"] = ["1", 0]
    return prompt


def test_object_info_lists_the_nodes_with_tooltips(client):
    info = client.get_json("/object_info")
    for name in FLEXIP_NODES:
        node = info[name]
        assert node["category"] == "FlexIP"
        assert node["description"], name
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert inputs, name
        for input_name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(node["output_tooltips"]) == len(node["output"]) and all(node["output_tooltips"]), name


def test_basic_workflow_runs_and_the_png_carries_its_graph(client, test_prompt):
    prompt = test_prompt()
    workflow = json.loads((REPO / "example_workflows" / "flexip_basic.json").read_text())
    image = Image.open(io.BytesIO(run_image(client, prompt, workflow)))
    assert image.size == (64, 64)
    # ComfyUI adds the IS_CHANGED results it computed (LoadImage's hash, FlexIPLoader's mtime).
    stored = {node_id: {k: v for k, v in node.items() if k != "is_changed"}
              for node_id, node in json.loads(image.info["prompt"]).items()}
    assert stored == prompt
    assert json.loads(image.info["workflow"]) == workflow


def test_every_patch_fires_once_per_chunk_per_step(server, client, test_prompt):
    """16 layers, each called with [cond, uncond] chunks at each of the steps (CFG > 1)."""
    start = len(server.log_text())
    prompt = test_prompt(seed=11)
    steps = prompt["13"]["inputs"]["steps"]
    run_image(client, prompt)
    calls = re.findall(r"FlexIP attn2 (\w+) chunks \[([\d, ]+)\]", server.log_text()[start:])
    chunks = {}
    for layer, kinds in calls:
        chunks.setdefault(layer, []).extend(int(k) for k in kinds.split(","))
    assert sorted(chunks) == sorted(SD15_LAYERS)
    for layer, kinds in chunks.items():
        assert sorted(kinds) == [0] * steps + [1] * steps, layer


def test_gamma_moves_the_image_and_strength_zero_is_the_plain_model(client, test_prompt):
    images = {g: digest(run_image(client, test_prompt(gamma=g))) for g in (0.0, 0.5, 1.0)}
    plain = digest(run_image(client, without_flexip(test_prompt())))
    assert len({*images.values(), plain}) == 4, "gamma 0, 0.5, 1 and no FlexIP must all differ"
    zero = test_prompt()
    zero["11"]["inputs"]["strength"] = 0.0
    assert digest(run_image(client, zero)) == plain


def test_changing_only_gamma_reruns_neither_encoder_nor_adapters(client, test_prompt):
    client.run(test_prompt(gamma=0.3, seed=5))
    entry = client.run(test_prompt(gamma=0.7, seed=5))
    cached = [set(m[1]["nodes"]) for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and {"8", "9", "10"} <= cached[0], "ReferenceEncoder or an adapter ran again"
    assert "11" not in cached[0] and "13" not in cached[0]


def test_sweep_workflow_gives_one_image_per_gamma(client, test_prompt):
    entry = client.run(test_prompt("flexip_gamma_sweep_api.json"))
    pngs = client.images(entry)
    assert len(pngs) == 5 and len({digest(p) for p in pngs}) == 5


def test_long_prompt_against_a_short_negative(server, client, test_prompt):
    """A 3-chunk prompt (231 tokens) against a 77-token negative: S has different lengths for
    cond and uncond, which ComfyUI then runs as separate chunks."""
    prompt = test_prompt(seed=21)
    prompt["2"]["inputs"]["text"] = ", ".join(["a small red ceramic teapot on an old wooden table"] * 16)
    start = len(server.log_text())
    image = Image.open(io.BytesIO(run_image(client, prompt)))
    assert image.size == (64, 64)
    kinds = re.findall(r"FlexIP attn2 input_1_0 chunks \[([\d, ]+)\]", server.log_text()[start:])
    assert sorted(k for chunk in kinds for k in chunk.split(", ")) == ["0"] * 2 + ["1"] * 2
