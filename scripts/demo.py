"""The gamma sweep, end to end through the real ComfyUI server (run by scripts/demo.sh).

Uses real model files where they are in the models folders under the names the shipped
workflows use; otherwise builds full-shape random-initialised ones once (cached) and says so.
Queues example_workflows/api/flexip_gamma_sweep_api.json (gamma 0, 0.25, 0.5, 0.75, 1) through
the HTTP API and writes a labelled contact sheet PNG.

Then it shows what gamma does with trained weights: the miniature (benchmarks/nano), FlexIP
trained on the CPU on a toy world, built on the first run (minutes) and cached in .host/nano;
its gamma sweep on subjects it never saw is copied next to the contact sheet.
"""
import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

import comfy_server
import flexip_client
import host

SWEEP = host.REPO / "example_workflows" / "api" / "flexip_gamma_sweep_api.json"
# The shipped workflow's model names, their models/ folder, and the random stand-in's builder.
MODELS = {
    "checkpoint": ("checkpoints", "v1-5-pruned-emaonly.safetensors", "sd15_checkpoint"),
    "clip_vision": ("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vit_h"),
    "dino": ("clip_vision", "dinov2-large.safetensors", "dinov2_large"),
    "flexip": ("flexip", "flexip-sd15.safetensors", "flexip_sd15"),
}


class Stages:
    """with stages("name"): ... prints and records how long each stage took."""

    def __init__(self):
        self.times = []

    @contextlib.contextmanager
    def __call__(self, name):
        print(f"[demo] {name} ...", flush=True)
        start = time.time()
        yield
        self.times.append((name, time.time() - start))
        print(f"[demo] {name}: {self.times[-1][1]:.1f} s", flush=True)


def find_models():
    """{role: file name}, and whether any of them is a random stand-in."""
    names, random_roles = {}, []
    for role, (folder, real_name, builder) in MODELS.items():
        if any((d / folder / real_name).exists() for d in (host.COMFYUI / "models", comfy_server.MODELS)):
            names[role] = real_name
        else:
            sys.path.insert(0, str(host.COMFYUI))
            import comfy.cli_args
            comfy.cli_args.args.cpu = True
            import random_models
            names[role] = getattr(random_models, builder)().name
            random_roles.append(role)
    return names, random_roles


def sweep_prompt(names, image, size, steps, seed):
    prompt = flexip_client.override(json.loads(SWEEP.read_text()), image=image, seed=seed, models=names,
                                    size=size, steps=steps)
    gammas = [node["inputs"]["gamma"] for node in prompt.values() if node["class_type"] == "FlexIPGatedApply"]
    return prompt, gammas


def synthetic_reference(path):
    """A simple made-up subject (no image data sets can be downloaded here)."""
    image = Image.new("RGB", (384, 384), (70, 110, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((80, 60, 300, 300), fill=(220, 120, 40), outline=(40, 20, 10), width=6)
    draw.ellipse((140, 130, 170, 160), fill=(20, 20, 20))
    draw.ellipse((210, 130, 240, 160), fill=(20, 20, 20))
    draw.arc((140, 180, 240, 250), 20, 160, fill=(40, 20, 10), width=6)
    image.save(path)
    return path


def contact_sheet(reference, images, gammas, warning, path):
    cell, label = 256, 28
    sheet = Image.new("RGB", (cell * (len(images) + 1), cell + 2 * label), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), warning or "FlexIP gamma sweep", fill=(200, 0, 0) if warning else (0, 0, 0))
    for i, (image, caption) in enumerate([(reference, "reference")] +
                                         [(img, f"gamma {g:.2f}") for img, g in zip(images, gammas)]):
        sheet.paste(image.convert("RGB").resize((cell, cell)), (i * cell, label))
        draw.text((i * cell + 6, label + cell + 6), caption, fill=(0, 0, 0))
    draw.text((cell + 6, label + cell + 16), "<- personalize (follow the prompt)      preserve (keep the subject) ->",
              fill=(90, 90, 90))
    sheet.save(path)


# The miniature's CI-sized run (about 5 minutes to build on 2 CPU cores, then cached); the full
# benchmark's sweep is shown instead where `python -m benchmarks.nano` has been run.
NANO_SIZE = "ci"


def nano_sweep(out):
    """Build (or reuse) the trained miniature (its default training variant) and copy its gamma sweep
    into out; -> (sheet, report)."""
    sys.path.insert(0, str(host.REPO))
    from benchmarks.nano.__main__ import DEFAULT_REPORT
    report = host.HOST / "nano" / "full" / "report" / DEFAULT_REPORT
    if not (report / "gamma_sweep.png").is_file():
        cache = host.HOST / "nano" / NANO_SIZE
        subprocess.run([sys.executable, "-m", "benchmarks.nano", "--size", NANO_SIZE, "--cache", str(cache)],
                       cwd=host.REPO, check=True)
        report = cache / "report" / DEFAULT_REPORT
    sheet = out / "nano_gamma_sweep.png"
    shutil.copyfile(report / "gamma_sweep.png", sheet)
    return sheet, report / "report.md"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="reference image (default: a synthetic subject)")
    parser.add_argument("--size", type=int, help="image size in pixels (default 512 with real weights, 128 with random)")
    parser.add_argument("--steps", type=int, help="sampling steps (default 30 with real weights, 4 with random)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(host.HOST / "run" / "demo"), help="output folder")
    parser.add_argument("--no-nano", action="store_true", help="skip the trained miniature's gamma sweep "
                        "(benchmarks/nano; a few minutes on its first run, cached after)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Stages()

    with stage("model files"):
        names, random_roles = find_models()
    warning = None
    if random_roles:
        warning = (f"RANDOM WEIGHTS ({', '.join(random_roles)}): these images show that the pipeline runs, "
                   "not what FlexIP looks like.")
        print(f"[demo] NOTE: {warning} Put real files in ComfyUI/models (see README) for real results.", flush=True)
    size = args.size or (128 if random_roles else 512)
    steps = args.steps or (4 if random_roles else 30)

    reference = Path(args.image) if args.image else synthetic_reference(out / "reference.png")
    with stage("start ComfyUI"):
        server = comfy_server.ComfyServer().start()
    try:
        client = server.client()
        prompt, gammas = sweep_prompt(names, client.upload_image(reference), size, steps, args.seed)
        with stage(f"gamma sweep {gammas} at {size} px, {steps} steps"):
            entry = client.run(prompt)
        with stage("contact sheet"):
            shots = sorted((float(meta["filename"].split("gamma_")[1].split("_")[0]),
                            Image.open(io.BytesIO(client.image(meta))))
                           for output in entry["outputs"].values() for meta in output.get("images", []))
            sheet = out / "contact_sheet.png"
            contact_sheet(Image.open(reference), [img for _, img in shots], [g for g, _ in shots], warning, sheet)
    finally:
        server.stop()
    print(f"[demo] contact sheet: {sheet}")
    if not args.no_nano:
        with stage("miniature: FlexIP-nano trained on a toy world (built once, then cached)"):
            nano_sheet, nano_report = nano_sweep(out)
        print(f"[demo] trained gamma sweep (miniature): {nano_sheet}  (report: {nano_report})")
    for name, seconds in stage.times:
        print(f"[demo]   {seconds:7.1f} s  {name}")
    if warning:
        print(f"[demo] {warning}")


if __name__ == "__main__":
    main()
