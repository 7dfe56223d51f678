"""Helpers of the evaluation tests: reference images, spec writing, and a cheap method
(blend_api.json: the reference blended towards a colour given by the seed, by the control; core
nodes only, so its servers need no model)."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

BLEND_TEMPLATE = Path(__file__).resolve().parent / "blend_api.json"


def references(folder, count, seed=0):
    """count textured reference images of different, non-square sizes."""
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(count):
        path = Path(folder) / f"subject{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.rand(80 + 8 * i, 64, 3) * 255).astype("uint8")).save(path)
        paths.append(path)
    return paths


def toml_value(value):
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML


def write_spec(folder, *, subjects, methods, seeds=(0,), controls=(0.0, 1.0), servers=(), queue_depth=2,
               scoring=None, note="", name="test-bench"):
    """A TOML spec under folder. subjects: [(id, image path, [prompts])]; methods: {name: table}."""
    lines = ["[benchmark]", f"name = {toml_value(name)}", f"seeds = {toml_value(list(seeds))}",
             f"controls = {toml_value(list(controls))}", f"note = {toml_value(note)}", "",
             "[servers]", f"urls = {toml_value(list(servers))}", f"queue_depth = {queue_depth}", ""]
    for subject_id, image, prompts in subjects:
        lines += ["[[subjects]]", f"id = {toml_value(subject_id)}", f"image = {toml_value(str(image))}",
                  f"prompts = {toml_value(list(prompts))}", ""]
    for name, table in methods.items():
        lines += [f"[methods.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()] + [""]
    for key, table in (scoring or {}).items():
        if isinstance(table, dict):
            lines += [f"[scoring.{key}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()] + [""]
    plain = {k: v for k, v in (scoring or {}).items() if not isinstance(v, dict)}
    if plain:
        lines += ["[scoring]"] + [f"{k} = {toml_value(v)}" for k, v in plain.items()] + [""]
    path = Path(folder) / "spec.toml"
    path.write_text("\n".join(lines))
    return path


def blend_method(controls=None, size=32):
    table = {"workflow": str(BLEND_TEMPLATE), "control": "blend", "params": {"size": size}}
    if controls is not None:
        table["controls"] = list(controls)
    return table
