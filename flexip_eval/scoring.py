"""Scoring: every generated image on disk gets the paper's metrics, one CSV row per image.

The [scoring] tables of the spec say which local files to use (nothing is downloaded) and name
each metric's backbone, which the report prints beside every number:
  [scoring.clip]       CLIP-I, CLIP-T, CLIP-IQA: path (an open_clip folder, or a .safetensors state
                       dict), backbone (the open_clip architecture: ViT-B-32 (default), ViT-L-14,
                       ViT-H-14 ...; a folder's own configuration names it, and is checked against
                       a backbone given), or format = "hf-vision" for ComfyUI's HF CLIP ViT-H/14
                       image encoder (CLIP-I only)
  [scoring.dino]       DINO-I: path and backbone: dino-vits16 (default), dino-vits8, dino-vitb16,
                       dino-vitb8 (DINO v1, a hub-format folder: config.json + model.safetensors), or
                       dinov2 (a hub-format DINOv2 file of any size, with optional heads and resolution)
  [scoring.aesthetic]  head (.safetensors or .pth), and clip_path / clip_model / clip_format for
                       its CLIP ViT-L/14 (default: the [scoring.clip] model)
  clip_iqa_pairs       which antonym pairs (default: all published ones); CLIP-IQA is "quality"
  batch_size, device
The defaults are the backbones of DreamBooth's table, which FlexIP's Table 1 follows (DINO ViT-S/16,
CLIP ViT-B/32). A metric whose model is not configured is left out of the CSV and the report.
"""
import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from flexip_core.aesthetic import load_aesthetic_head
from flexip_core.eval_encoders import DINO_V1_BACKBONES, load_dino_v1, load_dinov2, load_open_clip
from flexip_core.metrics import CLIP_IQA_PAIRS, clip_iqa, reference_and_prompt_scores

from .runner import GENERATION_LOG, read_jsonl

SCORES = "scores.csv"
SCORING_INFO = "scoring.json"
META_COLUMNS = ("method", "subject", "prompt_index", "prompt", "seed", "control", "server", "seconds")
# The backbones of DreamBooth's table (DINO ViT-S/16, CLIP ViT-B/32), which FlexIP's Table 1 is
# assumed to follow (the paper does not name them).
DEFAULT_BACKBONES = {"clip": "ViT-B-32", "dino": "dino-vits16"}
DINO_BACKBONES = (*DINO_V1_BACKBONES, "dinov2")


def load_image(path):
    """[H, W, C] float in [0, 1]; alpha is kept (the preprocessing paints it over grey)."""
    image = Image.open(path)
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def load_mask(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)


def mask_beside(image_path):
    """<name>_mask.png next to an image, if the user put one there."""
    mask = Path(image_path).with_name(f"{Path(image_path).stem}_mask.png")
    return mask if mask.is_file() else None


def _clip(config, prefix="", default=None):
    path = config.get(f"{prefix}path")
    if path is None:
        raise ValueError(f"[scoring] a CLIP needs {prefix}path (an open_clip folder or safetensors file)")
    # "model" is the older name of "backbone"; a folder names its own architecture.
    backbone = config.get(f"{prefix}backbone") or config.get(f"{prefix}model")
    hf_vision = config.get(f"{prefix}format") == "hf-vision"  # always ViT-H-14
    if backbone is None and not hf_vision and not Path(path).is_dir():
        backbone = default
    return load_open_clip(path, backbone, hf_vision)


def _dino(config):
    """DINO v1 from a hub-format folder, or DINOv2 from a hub-format file (both name their size)."""
    path, backbone = config.get("path"), config.get("backbone")
    if path is None:
        raise ValueError("[scoring.dino] needs path (a DINO v1 hub folder or a DINOv2 safetensors file)")
    if backbone is not None and backbone not in DINO_BACKBONES:
        raise ValueError(f"[scoring.dino] backbone {backbone!r} is not one of {', '.join(DINO_BACKBONES)}")
    is_v1_folder = Path(path).is_dir() or Path(path).with_name("config.json").is_file()
    if backbone == "dinov2" or backbone is None and not is_v1_folder:
        return load_dinov2(path, config.get("heads"), int(config.get("resolution", 224)))
    return load_dino_v1(path, backbone)


class Scorer:
    def __init__(self, config):
        self.device = torch.device(config.get("device", "cpu"))
        self.batch_size = int(config.get("batch_size", 8))
        self.clip = _clip(config["clip"], default=DEFAULT_BACKBONES["clip"]).to(self.device) if "clip" in config else None
        self.dino = _dino(config["dino"]).to(self.device) if "dino" in config else None
        self.aesthetic, self.aesthetic_clip = None, None
        if "aesthetic" in config:
            aesthetic = config["aesthetic"]
            self.aesthetic = load_aesthetic_head(aesthetic["head"]).to(self.device)
            self.aesthetic_clip = _clip(aesthetic, "clip_").to(self.device) if "clip_path" in aesthetic else self.clip
            if self.aesthetic_clip is None:
                raise ValueError("[scoring.aesthetic] needs a CLIP ViT-L/14: set clip_path there or [scoring.clip]")
        pairs = config.get("clip_iqa_pairs", list(CLIP_IQA_PAIRS))
        unknown = set(pairs) - set(CLIP_IQA_PAIRS)
        if unknown:
            raise ValueError(f"[scoring] clip_iqa_pairs: unknown pairs {sorted(unknown)} (known: {list(CLIP_IQA_PAIRS)})")
        self.iqa_pairs = pairs if self.clip is not None and self.clip.has_text else []
        if self.iqa_pairs:
            texts = [p for name in self.iqa_pairs for p in CLIP_IQA_PAIRS[name]]
            self.pair_embeds = self.clip.texts(texts).reshape(len(self.iqa_pairs), 2, -1)

    def columns(self):
        columns = []
        if self.clip is not None:
            columns += ["clip_t"] * self.clip.has_text + ["clip_i"]
        columns += ["dino_i"] * (self.dino is not None)
        if "quality" in self.iqa_pairs:
            columns.append("clip_iqa")
        columns += ["aesthetic"] * (self.aesthetic is not None)
        columns += [f"clip_iqa_{name}" for name in self.iqa_pairs if name != "quality"]
        return columns

    def backbones(self):
        """{metric column: its backbone}, printed beside every number of the report."""
        named = {}
        if self.clip is not None:
            clip = f"CLIP {self.clip.backbone}"
            named.update({column: clip for column in self.columns() if column.startswith("clip_")})
        if self.dino is not None:
            named["dino_i"] = self.dino.backbone
        if self.aesthetic is not None:
            named["aesthetic"] = f"LAION head on CLIP {self.aesthetic_clip.backbone}"
        return named

    def models(self):
        """Which model gave which metric, for the report."""
        named = {}
        if self.clip is not None:
            named["CLIP-I" + (", CLIP-T, CLIP-IQA" if self.clip.has_text else "")] = self.clip.name
        if self.dino is not None:
            named["DINO-I"] = self.dino.name
        if self.aesthetic is not None:
            named["Aesthetic"] = f"LAION improved-aesthetic-predictor head over {self.aesthetic_clip.name}"
        return named

    @torch.no_grad()
    def score(self, spec, out, progress=True):
        """One row per generated image found under out (spec order); writes scores.csv and scoring.json."""
        out = Path(out)
        generation = {r["image"]: r for r in read_jsonl(out / GENERATION_LOG)}  # the last record of an image wins
        jobs = [job for job in spec.jobs() if (out / job.image).is_file()]
        references, prompts, rows = {}, {}, []
        bar = tqdm(total=len(jobs), desc="score", unit="img", disable=not progress, dynamic_ncols=True)
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start:start + self.batch_size]
            images = [load_image(out / job.image) for job in batch]
            masks = [None if m is None else load_mask(m) for m in (mask_beside(out / job.image) for job in batch)]
            # Masks (background removal) count for the image metrics only, not for CLIP-T, CLIP-IQA, aesthetic.
            masked = any(m is not None for m in masks)
            refs = [self._reference(spec, job.subject, references) for job in batch]
            embeds = self.clip.images(images) if self.clip is not None else None
            # One reference per image: [B, 1, D] references, so each row is scored against its own.
            metrics = reference_and_prompt_scores(
                clip_images=(self.clip.images(images, masks) if masked else embeds) if embeds is not None else None,
                clip_references=torch.stack([r["clip"] for r in refs]) if embeds is not None else None,
                dino_images=self.dino.images(images, masks) if self.dino is not None else None,
                dino_references=torch.stack([r["dino"] for r in refs]) if self.dino is not None else None,
                clip_image_embeds=embeds,
                prompt_embeds=(torch.cat([self._prompt(job.prompt, prompts) for job in batch])
                               if embeds is not None and self.clip.has_text else None))
            if self.iqa_pairs:
                for name, scores in zip(self.iqa_pairs, clip_iqa(embeds, self.pair_embeds).T):
                    metrics["clip_iqa" if name == "quality" else f"clip_iqa_{name}"] = scores
            if self.aesthetic is not None:
                aesthetic_embeds = embeds if self.aesthetic_clip is self.clip else self.aesthetic_clip.images(images)
                metrics["aesthetic"] = self.aesthetic(aesthetic_embeds)
            for k, job in enumerate(batch):
                made = generation.get(job.image.as_posix(), {})
                rows.append({"method": job.method, "subject": job.subject, "prompt_index": job.prompt_index,
                             "prompt": job.prompt, "seed": job.seed, "control": job.control,
                             "server": made.get("server", ""), "seconds": made.get("seconds", ""),
                             **{name: float(values[k]) for name, values in metrics.items()},
                             "image": job.image.as_posix()})
            bar.update(len(batch))
        bar.close()
        write_scores(out / SCORES, rows, list(META_COLUMNS) + self.columns() + ["image"])
        (out / SCORING_INFO).write_text(json.dumps({"models": self.models(), "backbones": self.backbones(),
                                                    "clip_iqa_pairs": self.iqa_pairs, "images": len(rows)}, indent=2))
        return rows

    def _reference(self, spec, subject_id, cache):
        if subject_id not in cache:
            subject = spec.subject(subject_id)
            image = [load_image(subject.image)]
            mask = [None if subject.mask is None else load_mask(subject.mask)]
            cache[subject_id] = {"clip": self.clip.images(image, mask) if self.clip is not None else None,
                                 "dino": self.dino.images(image, mask) if self.dino is not None else None}
        return cache[subject_id]

    def _prompt(self, prompt, cache):
        if prompt not in cache:
            cache[prompt] = self.clip.texts([prompt])
        return cache[prompt]


def write_scores(path, rows, columns):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_scores(path):
    """scores.csv -> list of dicts with numbers as floats (empty cells as NaN)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key in row:
                if key not in ("method", "subject", "prompt", "server", "image"):
                    row[key] = float(row[key]) if row[key] != "" else math.nan
            rows.append(row)
    return rows
