"""The full-shape SD1.5 training run of test_train_sd15.py: its data, its config and its command.

The model files are the random full-shape ones of scripts/random_models.py (the `model_files`
fixture builds them); the data is two image subjects and one two-view object, made here.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import host

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / ".host" / "models"
COMFYUI = host.COMFYUI  # the test host FLEXIP_HOST selects
FOLDERS = {"checkpoint": "checkpoints", "clip_vision": "clip_vision", "dino": "clip_vision", "flexip": "flexip"}


def model_paths(model_files):
    """{"checkpoint", "clip_vision", "dino"} -> the file's path, from the names ComfyUI lists."""
    return {role: MODELS / FOLDERS[role] / model_files[role] for role in ("checkpoint", "clip_vision", "dino")}


def picture(seed, size=(80, 72)):
    """A smooth colour picture with a blob and some noise (each seed its own subject)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.03)
    colour = rng.uniform(0.2, 0.9, 3)
    pixels = 0.3 + 0.3 * y[..., None] + blob[..., None] * (colour - 0.3) + rng.normal(0, 0.03, (height, width, 3))
    return Image.fromarray((pixels.clip(0, 1) * 255).astype(np.uint8))


def write_data(folder):
    """Two image subjects and one object seen from two sides, with captions, and their manifests
    (built by the manifest builders): ([images.jsonl, multiview.jsonl], a reference picture)."""
    from tiny_run import write_manifests
    folder = Path(folder)
    for i, caption in enumerate(("a photo of a red toy", "a photo of a blue cup")):
        path = folder / "images" / f"subject{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(i).save(path)
        path.with_suffix(".txt").write_text(caption)
    for v in range(2):
        path = folder / "multiview" / "object0" / f"view{v}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(10 + v, (64, 64)).save(path)
    (folder / "multiview" / "object0" / "caption.txt").write_text("a green box turned around")
    return write_manifests(folder), folder / "images" / "subject0.png"


def run_config(run_dir, model_files, manifests, **sections):
    """A TrainConfig for the full-shape run: 64 px images, batch 1, no workers, no feature cache,
    validation off; `sections` ({section: {key: value}}) override or add options."""
    from flexip_train.config import config_from_dict
    paths = model_paths(model_files)
    data = {
        "run": {"output_dir": str(run_dir), "seed": 0, "log_every": 1, "validate_every": 0},
        "model": {"checkpoint": str(paths["checkpoint"]), "clip_vision": str(paths["clip_vision"]),
                  "dino": str(paths["dino"]), "comfyui": str(COMFYUI)},
        "data": {"manifests": [str(m) for m in manifests], "resolution": 64, "batch_size": 1, "num_workers": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


def train_cli(config, folder, timeout=1800):
    """`python -m flexip_train --config <folder>/run.toml` in a fresh process (this venv's python),
    from the repository root. -> (return code, the process's output)."""
    from flexip_train.config import to_toml
    folder = Path(folder)
    toml = folder / "run.toml"
    toml.write_text(to_toml(config))
    log = folder / "train.log"
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", "flexip_train", "--config", str(toml)], cwd=REPO,
                              stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
    return code, log.read_text()
