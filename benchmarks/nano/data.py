"""The adapters' training data on disk: the world's training subjects as small PNGs with caption
sidecars, and the two JSONL manifests flexip_train's Trainer reads.

- Image ("invariant") samples, folder images/: each picture is its own reference and target (the
  dataset lightly augments the reference). Their captions are incomplete, as real captions are:
  each scene attribute (background, position, size) is named for half of the pictures, so what a
  caption leaves out only the reference can supply: these samples teach "keep what the reference
  shows" (the preservation side, gamma near 1).
- Multi-view ("video"-like, variant) samples, folder views/: the same subject in other scenes,
  each view's caption naming its whole scene; a pair's reference is one view and its target another,
  so these teach "this subject, where the prompt says" (the personalization side, gamma near 0).
In both, the body colour is named for half of the pictures and the pattern and its colour never.
Every picture has its exact subject mask beside it as the builders' loss mask (<k>.loss.mask.png),
which the training loss weighs by train.Budget.subject_weight, and its subject alone
(subjects/<subject>/<k>.png, subject_reference) for variants whose references show only the subject.
index.json gives every picture's subject and scene. variant_manifests() turns the builders'
manifests into a training variant's (variants.VARIANTS), rendering the recoloured views some ask for.
Every choice is fixed per picture (a hash), so the data is the same on every build.
"""
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from flexip_core.preprocess import BACKGROUND

from . import world

SUBJECT_BOX = (1.1, 1.5)  # a subject-only reference's box: this many times the subject's bounding box
EVALUATION_SUBJECT_BOX = 1.3  # the evaluation's references: the middle of the training range


def _coin(*key):
    """A fixed fair coin per key."""
    return hashlib.sha256("/".join(map(str, key)).encode()).digest()[0] % 2 == 0


def _uniform(low, high, *key):
    """A fixed draw in [low, high) per key."""
    return low + (high - low) * int.from_bytes(hashlib.sha256("/".join(map(str, key)).encode()).digest()[:4]) / 2**32


def subject_reference(picture, mask, scale):
    """The subject alone, as a segmenting data pipeline gives it to the encoders: outside its exact
    mask the picture becomes flexip_core.preprocess's grey; the square box `scale` times the longer
    side of the mask's bounding box, about its centre, is cut out (grey beyond the picture) and
    resized to the picture's size. picture [32, 32, 3], mask [32, 32] -> [32, 32, 3]."""
    size = picture.shape[0]
    subject = picture * mask[..., None] + BACKGROUND * (1 - mask[..., None])
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    top, bottom, left, right = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    side = max(1, round(scale * max(bottom - top, right - left)))
    y0, x0 = round((top + bottom - side) / 2), round((left + right - side) / 2)
    padded = F.pad(subject.movedim(-1, 0), (size, size, size, size), value=BACKGROUND)
    crop = padded[:, y0 + size:y0 + size + side, x0 + size:x0 + size + side]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0].movedim(0, -1).clamp(0, 1)


def names_colour(subject_id, scene_id):
    """Whether a training picture's caption names the body colour (half of them)."""
    return _coin(subject_id, scene_id)


def image_caption(subject_id, scene_id):
    """An image sample's caption: the shape, the colour half the time, each scene attribute half the time."""
    subject, scene = world.Subject.from_id(subject_id), world.Scene.from_id(scene_id)
    words = ["a"]
    if _coin(subject_id, scene_id, "size"):
        words.append(scene.size)
    if names_colour(subject_id, scene_id):
        words.append(subject.colour)
    words.append(subject.shape)
    if _coin(subject_id, scene_id, "position"):
        words += ["at", "the", scene.position]
    if _coin(subject_id, scene_id, "background"):
        words += ["on", scene.background]
    return " ".join(words)


def view_caption(subject_id, scene_id):
    """A multi-view sample's (target) caption: its whole scene, the colour half the time."""
    return world.caption(world.Subject.from_id(subject_id), world.Scene.from_id(scene_id),
                         names_colour(subject_id, scene_id))


def recoloured_view(subject_id, scene_id, reference, train):
    """The colour a multi-view pair (reference path, target (subject, scene)) recolours its target to
    under Variant.recoloured_views: a fixed draw among the other colours whose subject is in `train`,
    the training subjects' ids (a held-out subject is never drawn), and the fixed uniform draw in
    [0, 1) that decides whether the pair is recoloured. -> (colour name, draw)."""
    subject = world.Subject.from_id(subject_id)
    others = [c for c in world.COLOURS if c != subject.colour
              and world.Subject(subject.shape, c, subject.pattern, subject.mark).id in train]
    pick = int(_uniform(0, len(others), subject_id, scene_id, reference, "colour"))
    return others[pick], _uniform(0, 1, subject_id, scene_id, reference, "recolour")


def view_branch(subject_id, scene_id, reference):
    """The gamma a multi-view pair (reference path, target (subject, scene)) trains at under
    Variant.view_branches "coin": 1 (P alone) or 0 (S alone), a fixed fair coin per pair."""
    return 1.0 if _coin(subject_id, scene_id, reference, "branch") else 0.0


def write_training_data(folder, views_per_subject, pairs_per_view, seed=0, progress=True):
    """Every training subject in `views_per_subject` distinct random scenes, written twice: as image
    samples (images/<subject>/<k>.png with <k>.txt and <k>.loss.mask.png) and as one multi-view set
    (views/<subject>/...); and the manifests over them, built by flexip_train's builders.
    -> [images.jsonl, multiview.jsonl]."""
    from flexip_train.builders import LOSS_MASK_SUFFIX, images_manifest, multiview_manifest
    from flexip_train.manifest import summarize, write_manifest

    folder = Path(folder)
    renderer = world.Renderer()
    rng = np.random.default_rng(seed)
    train, _ = world.split()
    index = {}
    for subject_id in tqdm(train, desc="data: training pictures", unit="subject", disable=not progress):
        scenes = [int(c) for c in rng.choice(world.NUM_SCENES, views_per_subject, replace=False)]
        subjects = [subject_id] * len(scenes)
        pictures, masks = renderer.render(subjects, scenes), renderer.subject_mask(subjects, scenes)
        for k, (scene_id, picture, mask) in enumerate(zip(scenes, pictures, masks)):
            name = f"{subject_id:03d}/{k}.png"
            for kind, caption in (("images", image_caption), ("views", view_caption)):
                path = folder / kind / name
                world.save_png(picture, path)
                world.save_png(mask, path.with_name(path.stem + LOSS_MASK_SUFFIX))
                path.with_suffix(".txt").write_text(caption(subject_id, scene_id))
                index[f"{kind}/{name}"] = [subject_id, scene_id]
            scale = _uniform(*SUBJECT_BOX, subject_id, scene_id, "box")
            world.save_png(subject_reference(picture, mask, scale), folder / "subjects" / name)
    (folder / "index.json").write_text(json.dumps(index, indent=0, sort_keys=True))
    manifests = []
    for name, build in (("images", lambda: images_manifest(folder / "images", progress=progress)),
                        ("multiview", lambda: multiview_manifest(folder / "views", pairs_per_view, progress=progress))):
        samples, problems = build()
        if problems:
            raise RuntimeError(f"nano data: the written pictures did not load:\n{summarize(samples, problems)}")
        manifests.append(folder / f"{name}.jsonl")
        write_manifest(samples, manifests[-1])
    return manifests


def variant_manifests(folder, variant, out):
    """The builders' manifests (write_training_data's) as training variant `variant` asks:
    references of the subject alone (variant.references == "subject"), image samples captioned
    with another view's whole caption (variant.image_captions == "other_view": the caption then
    contradicts the picture, which is its own reference and target: the conflict gamma 1 must win),
    and multi-view targets recoloured (variant.recoloured_views: that share of the pairs whose caption
    names the colour get a target rendered in another colour, recoloured/<subject>/<k>-<colour>.png
    under `out`, a caption that names it and, if variant.recoloured_gamma is set, that gamma as the
    sample's own: the conflict gamma 0 must win), and image samples and the other multi-view samples at
    their own gamma (variant.image_gamma, variant.view_gamma or, with variant.view_branches "coin",
    view_branch()); with view_branches "both", each multi-view pair twice: as it is at gamma 1, and at gamma
    0 recoloured as above. -> [images.jsonl, multiview.jsonl], under `out` unless the variant changes nothing."""
    from flexip_train.manifest import read_manifest, write_manifest

    folder, out = Path(folder), Path(out)
    manifests = [folder / "images.jsonl", folder / "multiview.jsonl"]
    if (variant.references == "scene" and variant.image_captions == "own" and not variant.recoloured_views
            and variant.image_gamma is None and variant.view_gamma is None and variant.view_branches is None):
        return manifests
    index = json.loads((folder / "index.json").read_text())
    views = {}  # subject -> its views' scenes, in order
    for key, (subject, scene) in sorted(index.items()):
        if key.startswith("views/"):
            views.setdefault(subject, []).append(scene)

    def relative(path):
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()

    def reference(path):
        return str(folder / "subjects" / relative(path).split("/", 1)[1]) if variant.references == "subject" else path

    renderer, train = world.Renderer(), set(world.split()[0])

    def recoloured(sample):
        subject, scene = index[relative(sample.target)]
        if sample.modality != "multiview" or not names_colour(subject, scene):
            return sample
        colour, draw = recoloured_view(subject, scene, relative(sample.references[0]), train)
        if draw >= variant.recoloured_views:
            return sample
        own = world.Subject.from_id(subject)
        new = world.Subject(own.shape, colour, own.pattern, own.mark)
        target = out / "recoloured" / Path(relative(sample.target)).parent.name / f"{Path(sample.target).stem}-{colour}.png"
        if not target.is_file():
            world.save_png(renderer.render([new.id], [scene])[0], target)
        return dataclasses.replace(sample, target=str(target), caption=world.caption(new, world.Scene.from_id(scene)),
                                   gamma=variant.recoloured_gamma)

    written = []
    for manifest in manifests:
        samples, problems = read_manifest(manifest)
        if problems:
            raise RuntimeError(f"nano data: {manifest} has problems: {problems[:3]}")
        changed = []
        for sample in samples:
            if sample.modality == "image" and variant.image_captions == "other_view":
                subject, scene = index[relative(sample.target)]
                scenes = views[subject]
                sample = dataclasses.replace(
                    sample, caption=view_caption(subject, scenes[(scenes.index(scene) + 1) % len(scenes)]))
            copies = [sample]
            own_gamma = variant.image_gamma if sample.modality == "image" else variant.view_gamma
            if sample.modality == "multiview" and variant.view_branches == "coin":
                own_gamma = view_branch(*index[relative(sample.target)], relative(sample.references[0]))
            if own_gamma is not None:
                copies = [dataclasses.replace(sample, gamma=own_gamma)]
            if sample.modality == "multiview" and variant.view_branches == "both":
                copies = [dataclasses.replace(sample, gamma=1.0), dataclasses.replace(sample, gamma=0.0)]
            if variant.recoloured_views:  # a recoloured sample's gamma is variant.recoloured_gamma
                copies[-1] = recoloured(copies[-1])  # with "both", the gamma 1 copy stays as it is
            changed += [dataclasses.replace(c, references=tuple(reference(r) for r in c.references)) for c in copies]
        written.append(Path(out) / manifest.name)
        written[-1].parent.mkdir(parents=True, exist_ok=True)
        write_manifest(changed, written[-1])
    return written
