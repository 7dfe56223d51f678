"""Tiny training runs for the loop tests, in-process or as a script under torchrun:

    python -m torch.distributed.run --nproc_per_node 2 tests/flexip_train/tiny_run.py DATA OUT --batch 2 --steps 3
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from tiny_base import make_tiny_base  # noqa: E402


def write_data(folder, images=8, objects=4):
    """A folder of image samples (blocky colour pictures, each its own subject) and of two-view
    objects, with captions, and their manifests: [images.jsonl, multiview.jsonl]."""
    folder = Path(folder)
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    for i in range(images):
        blocks = rng.random((4, 4, 3))
        pixels = np.kron(blocks, np.ones((16, 16, 1)))
        path = folder / "images" / f"subject{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
        path.with_suffix(".txt").write_text(f"a photo of a {colours[i % len(colours)]} thing")
    for o in range(objects):
        base = rng.random((4, 4, 3))
        for v in range(2):
            view = np.roll(base, v, axis=1)
            path = folder / "multiview" / f"object{o}" / f"view{v}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.kron(view, np.ones((16, 16, 1))) * 255).astype(np.uint8)).save(path)
        (folder / "multiview" / f"object{o}" / "caption.txt").write_text(f"a {colours[o]} object turned around")
    return write_manifests(folder)


def write_manifests(folder):
    """The manifests of folder/images and folder/multiview, built by the builders: [images.jsonl, multiview.jsonl]."""
    from flexip_train.builders import images_manifest, multiview_manifest
    from flexip_train.manifest import write_manifest
    manifests = []
    for name, build in (("images", images_manifest), ("multiview", multiview_manifest)):
        samples, problems = build(folder / name, progress=False)
        assert samples and not problems, problems
        manifests.append(folder / f"{name}.jsonl")
        write_manifest(samples, manifests[-1])
    return manifests


def tiny_config(run_dir, manifests, **sections):
    """A TrainConfig for the tiny base: 64 px, no workers, checkpoints every step unless overridden."""
    from flexip_train.config import config_from_dict
    data = {
        "run": {"output_dir": str(run_dir), "max_steps": 4, "log_every": 1, "checkpoint_every": 1,
                "keep_checkpoints": 10, "validate_every": 0, "seed": 3},
        "data": {"manifests": [str(m) for m in manifests], "resolution": 64, "batch_size": 2, "num_workers": 0},
        "optim": {"lr": 1e-3},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


def make_trainer(config, seed=0):
    from accelerate import Accelerator

    from flexip_train.loop import Trainer
    base, flexip_config = make_tiny_base(seed)
    return Trainer(config, base, flexip_config, Accelerator(cpu=True))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    manifests = sorted(Path(args.data).glob("*.jsonl"))
    config = tiny_config(args.out, manifests, run={"max_steps": args.steps, "checkpoint_every": args.steps},
                         data={"batch_size": args.batch}, dropout={"text": 0.2, "image": 0.2, "both": 0.2})
    trainer = make_trainer(config)
    trainer.train()
    trainer.export()


if __name__ == "__main__":
    main()
