"""Draw example_workflows/<template>.jpg, the template browser's thumbnail of each example workflow,
from a real run of that workflow (its API copy) on the pinned ComfyUI test host.

No trained FlexIP weights exist, and the miniature's weights belong to its own toy model, so the
runs use the random-initialised full-shape model files the tests use (64 px, 2 steps); every
thumbnail says so on the picture. Start the server alone: wrap this in
`flock /tmp/comfy-server.lock` on a shared machine.

    .host/venv/bin/python scripts/template_thumbnails.py                  # every template
    .host/venv/bin/python scripts/template_thumbnails.py flexip_basic     # only the templates named
"""
import io
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import flexip_client
import host

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "example_workflows"
SIZE, STEPS, SEED = 64, 2, 7
WIDTH, HEIGHT = 320, 240
LABEL = "random weights: the graph runs; not FlexIP's look"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def font(size):
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:  # no DejaVu here: PIL's own bitmap font
        return ImageFont.load_default()


def thumbnail(name, reference, outputs, captions):
    """The reference, then each output, side by side, with the template's name and the label."""
    sheet = Image.new("RGB", (WIDTH, HEIGHT), (29, 35, 48))
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 8), name, font=font(15), fill=(242, 244, 248))
    tiles = [reference, *outputs]
    gap = 6
    cell = min(148, (WIDTH - 20 - gap * (len(tiles) - 1)) // len(tiles))
    left = (WIDTH - cell * len(tiles) - gap * (len(tiles) - 1)) // 2
    top = 34 + (HEIGHT - 34 - 40 - cell) // 2
    for i, (tile, caption) in enumerate(zip(tiles, ["reference", *captions])):
        x = left + i * (cell + gap)
        sheet.paste(tile.convert("RGB").resize((cell, cell), Image.NEAREST), (x, top))
        draw.text((x, top + cell + 3), caption, font=font(10 if cell < 80 else 12), fill=(200, 205, 215))
    draw.rectangle((0, HEIGHT - 22, WIDTH, HEIGHT), fill=(120, 30, 30))
    draw.text((8, HEIGHT - 19), LABEL, font=font(12), fill=(255, 235, 235))
    return sheet


def run(client, name, reference_name, models, subject=None):
    """The images the workflow's API copy gives, and the finished /history entry."""
    prompt = flexip_client.override(json.loads((WORKFLOWS / "api" / f"{name}_api.json").read_text()),
                                    image=reference_name, seed=SEED, models=models, size=SIZE, steps=STEPS,
                                    subject=subject)
    entry = client.run(prompt)
    return [Image.open(io.BytesIO(png)) for png in client.images(entry)], entry, prompt


def main():
    named = set(sys.argv[1:])
    unknown = named - {path.stem for path in WORKFLOWS.glob("*.json")}
    if unknown:
        raise SystemExit(f"no template {', '.join(sorted(unknown))} in {WORKFLOWS}")
    sys.path.insert(0, str(host.COMFYUI))  # random_models builds missing files with ComfyUI's classes
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import random_models
    from comfy_server import ComfyServer
    from demo import synthetic_reference

    models = {"checkpoint": random_models.sd15_checkpoint().name, "clip_vision": random_models.clip_vit_h().name,
              "dino": random_models.dinov2_large().name, "flexip": random_models.flexip_sd15().name}
    (host.HOST / "run").mkdir(parents=True, exist_ok=True)
    reference_path = synthetic_reference(host.HOST / "run" / "thumbnail_reference.png")
    reference = Image.open(reference_path)
    saved_subject = None
    with ComfyServer() as server:
        client = server.client()
        reference_name = client.upload_image(reference_path)
        for path in sorted(WORKFLOWS.glob("*.json"), key=lambda p: p.stem != "flexip_save_subject"):
            name = path.stem
            # flexip_load_subject needs the subject flexip_save_subject saves, so that one always runs
            if named and name not in named and not (name == "flexip_save_subject" and "flexip_load_subject" in named):
                continue
            images, entry, prompt = run(client, name, reference_name, models, subject=saved_subject)
            if name == "flexip_save_subject":  # flexip_load_subject reuses what this run saved
                (saved_subject,) = [o["subject_name"][0] for o in entry["outputs"].values() if "subject_name" in o]
            gammas = [n["inputs"]["gamma"] for n in prompt.values() if n["class_type"] == "FlexIPGatedApply"]
            sweeps = [n["inputs"]["gammas"] for n in prompt.values() if n["class_type"] == "FlexIPGammaSweep"]
            # Five tiles leave room for a short caption only.
            if sweeps:
                captions = [f"\u03b3 {float(g):g}" for g in sweeps[0].split(",")]
            elif len(gammas) == len(images):
                captions = [f"\u03b3 {g:g}" if len(images) > 1 else f"gamma {g:g}" for g in gammas]
            else:
                captions = ["schedule" if "schedule" in name else "output"] * len(images)
            out = path.with_suffix(".jpg")
            thumbnail(name, reference, images, captions).save(out, quality=80, optimize=True)
            print(f"{out.relative_to(REPO)}: {len(images)} image(s) of {images[0].size}, {out.stat().st_size} bytes")
    if saved_subject:
        (host.COMFYUI / "models" / "flexip_subjects" / saved_subject).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
