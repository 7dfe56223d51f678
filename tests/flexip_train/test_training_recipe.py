"""docs/training.md's one-GPU recipe, run: every command of the recipe's ```sh blocks, read from
the page, in order, in one folder, on the tiny configuration.

Tiny means: the data is a few generated pictures, clips and views in the folders the recipe
names; the frozen base is the tests' tiny ComfyUI UNet with its stand-in encoders (tiny_base:
FrozenBase.from_files returns it, as the full-shape files cannot be loaded in seconds); and each
command with a --config (training, and the feature set's) gets --set options after its own: 64 px,
batch 2, no workers, float32, a checkpoint every step, and 1/5000 of the steps it asks for (10000 -> 2). Lines marked GPU-only
are left out; `python -m flexip_eval` needs ComfyUI servers and is run by
tests/flexip_eval/test_runner_host.py on the test host."""
import contextlib
import io
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from tests.flexip_train.conftest import write_frame_folder, write_image, write_mask, write_video

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from tiny_base import COMFYUI, make_tiny_base  # noqa: E402

PAGE = REPO / "docs" / "training.md"
SECTION = "## A one-GPU recipe"
STEPS_PER_TINY_STEP = 5000


def recipe_commands():
    """The recipe section's ```sh lines, in order."""
    text = PAGE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end > 0 else None]
    return [line.strip() for block in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
            for line in block.splitlines() if line.strip()]


def write_folders(root):
    """What the recipe's data step leaves: images/, videos/ and multiview/ in the builders' layout."""
    for i in range(4):
        write_image(root / "images" / f"subject{i}.png", (48, 40), i, f"a photo of subject {i}")
    write_mask(root / "images" / "subject0.mask.png", (48, 40))
    write_video(root / "videos" / "walk.mp4", 12, "a walk")
    write_frame_folder(root / "videos" / "jump", 10, "a jump")
    for o in range(2):
        for v in range(2):
            write_image(root / "multiview" / f"object{o}" / f"{v}.png", (40, 40), 10 + 2 * o + v, caption=None)
        (root / "multiview" / f"object{o}" / "caption.txt").write_text(f"object {o} turned around")


def tiny_overrides(args, checkpoint):
    """--set options that make a training command tiny (after the command's own, so they win)."""
    asked = {}
    for flag, value in zip(args, args[1:]):
        if flag == "--set":
            key, _, v = value.partition("=")
            asked[key] = v
    config = (Path.cwd() / args[args.index("--config") + 1]).read_text()
    planned = int(asked.get("run.max_steps") or re.search(r"^max_steps = (\d+)", config, re.M).group(1))
    tiny = {"run.max_steps": planned // STEPS_PER_TINY_STEP, "run.checkpoint_every": 1,
            "model.checkpoint": f'"{checkpoint}"', "model.comfyui": f'"{COMFYUI}"',
            "model.flexip_config": '"tiny-test"', "model.gradient_checkpointing": "false",
            "data.resolution": 64, "data.batch_size": 2, "data.num_workers": 0, "optim.grad_accum": 1,
            "optim.mixed_precision": '"no"'}
    return [item for key, value in tiny.items() for item in ("--set", f"{key}={value}")]


def run(command, checkpoint):
    """One recipe line, in this process. -> what it printed."""
    from flexip_train import build_manifest
    from flexip_train.__main__ import main as flexip_train_main
    args = shlex.split(command, comments=True)
    assert args[:2] == ["python", "-m"], f"the recipe test cannot run `{command}`"
    program, args = args[2], args[3:]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if program == "flexip_train.build_manifest":
            assert build_manifest.main(args) == 0, command
        elif program == "flexip_train":
            if "--config" in args:
                args += tiny_overrides(args, checkpoint)
            assert flexip_train_main(args) in (None, 0), command
        else:
            raise AssertionError(f"the recipe test cannot run `{command}`")
    return out.getvalue()


@pytest.fixture
def tiny_base_for_the_cli(monkeypatch, tmp_path):
    """FrozenBase.from_files -> the tiny base, its UNet's weights written to a file for the run's base hash."""
    from flexip_core import config as flexip_configs
    from flexip_train.comfy_base import FrozenBase
    base, config = make_tiny_base(0)
    monkeypatch.setitem(flexip_configs.CONFIGS, config.name, config)
    monkeypatch.setattr(FrozenBase, "from_files", classmethod(lambda cls, *args: base))
    checkpoint = tmp_path / "tiny-sd15.safetensors"
    save_file({k: v.contiguous() for k, v in base.model.model.diffusion_model.state_dict().items()}, checkpoint)
    return checkpoint


def test_the_recipe_runs_from_data_to_exported_weights(tiny_base_for_the_cli, tmp_path, monkeypatch):
    commands = recipe_commands()
    run_here = [c for c in commands if not c.endswith("# GPU-only") and "-m flexip_eval" not in c]
    assert len(run_here) >= 7 and any("accelerate launch" in c for c in commands), commands
    work = tmp_path / "work"
    write_folders(work)
    shutil.copytree(REPO / "docs" / "recipe", work / "docs" / "recipe")
    monkeypatch.chdir(work)
    printed = [run(command, tiny_base_for_the_cli) for command in run_here]

    index = json.loads((work / "data" / "shards" / "shards.json").read_text())
    assert index["kinds"] == {"invariant": 4, "variant": 6}, index["kinds"]  # 4 images; 2 clips + 2 objects x 2 views
    features = json.loads((work / "data" / "features" / "shards.json").read_text())
    assert (features["content"], features["kinds"]) == ("features", index["kinds"]), features
    for name, steps in (("flexip-80gb", 2), ("flexip-80gb-features", 2), ("flexip-24gb", 4)):
        with safe_open(str(work / "runs" / name / "flexip-sd15.safetensors"), "pt") as f:
            facts = json.loads(f.metadata()["training"])
        assert (facts["steps"], facts["samples"], facts["variant_samples"]) == (steps, 10, 6), facts
    resumed = next(p for c, p in zip(run_here, printed) if "run.max_steps=20000" in c)
    assert "resumed from" in resumed and "step-00000002" in resumed, resumed
