"""The commands the docs give that need a ComfyUI server, run as documented (tests/docs/test_docs.py
checks that every option a doc command uses is used here):

    scripts/demo.sh                                  (README.md, docs/development.md)
    python3 scripts/flexip_client.py <workflow> ...  (docs/workflows.md)

with the random test models, at the test size and steps so that they take seconds.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import flexip_client

REPO = Path(__file__).resolve().parents[2]


def api_workflow_for_the_test_models(name, model_files, tmp_path):
    """The shipped API workflow with the test host's model file names (a user's has the real names)."""
    workflow = flexip_client.override(json.loads((REPO / "example_workflows" / "api" / name).read_text()),
                                      models=model_files)
    path = tmp_path / name
    path.write_text(json.dumps(workflow))
    return path


def test_the_client_commands_of_docs_workflows(server, client, model_files, tmp_path):
    subject = tmp_path / "subject.png"
    Image.fromarray((np.random.RandomState(5).rand(80, 64, 3) * 255).astype("uint8")).save(subject)
    for name, options, expected in [
        ("flexip_basic_api.json",
         ["--prompt", "a photo of the subject on a beach", "--gamma", "0.3", "--seed", "7"],
         {"gamma": 0.3, "seed": 7, "text": "a photo of the subject on a beach"}),
        ("flexip_style_transfer_api.json", ["--prompt", "a red fox sitting in a meadow, painting", "--seed", "7"],
         {"gamma": 0.25, "seed": 7, "text": "a red fox sitting in a meadow, painting"}),
    ]:
        out = tmp_path / name.replace(".json", "")
        run = subprocess.run([sys.executable, "scripts/flexip_client.py",
                              str(api_workflow_for_the_test_models(name, model_files, tmp_path)),
                              "--image", str(subject), *options, "--server", server.url, "--out", str(out),
                              "--size", "64", "--steps", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        (png,) = out.glob("*.png")
        assert Image.open(png).size == (64, 64)
        # What the server ran: the newest prompt in its history.
        history = client.get_json("/history")
        prompt = max(history.values(), key=lambda entry: entry["prompt"][0])["prompt"][2]
        nodes = {node["class_type"]: node["inputs"] for node in prompt.values()}
        assert nodes["FlexIPGatedApply"]["gamma"] == expected["gamma"]
        assert nodes["KSampler"]["seed"] == expected["seed"]
        assert expected["text"] in [n["inputs"].get("text") for n in prompt.values() if n["class_type"] == "CLIPTextEncode"]


def test_the_demo_command(server, tmp_path):
    """scripts/demo.sh as README.md gives it, at the test size, without the miniature's part (which
    tests/benchmarks/nano runs). It starts its own server, so the session's stops meanwhile."""
    server.stop()
    try:
        run = subprocess.run(["scripts/demo.sh", "--no-nano", "--size", "64", "--steps", "2", "--out", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=900)
    finally:
        server.start()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width > 5 * 64  # the five gammas side by side
    assert "[demo] contact sheet:" in run.stdout
