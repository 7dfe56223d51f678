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
which the training loss weighs by train.Budget.subject_weight.
Every choice is fixed per picture (a hash), so the data is the same on every build.
"""
import hashlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import world


def _coin(*key):
    """A fixed fair coin per key."""
    return hashlib.sha256("/".join(map(str, key)).encode()).digest()[0] % 2 == 0


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
    for subject_id in tqdm(train, desc="data: training pictures", unit="subject", disable=not progress):
        scenes = [int(c) for c in rng.choice(world.NUM_SCENES, views_per_subject, replace=False)]
        subjects = [subject_id] * len(scenes)
        pictures, masks = renderer.render(subjects, scenes), renderer.subject_mask(subjects, scenes)
        for k, (scene_id, picture, mask) in enumerate(zip(scenes, pictures, masks)):
            for kind, caption in (("images", image_caption), ("views", view_caption)):
                path = folder / kind / f"{subject_id:03d}" / f"{k}.png"
                world.save_png(picture, path)
                world.save_png(mask, path.with_name(path.stem + LOSS_MASK_SUFFIX))
                path.with_suffix(".txt").write_text(caption(subject_id, scene_id))
    manifests = []
    for name, build in (("images", lambda: images_manifest(folder / "images", progress=progress)),
                        ("multiview", lambda: multiview_manifest(folder / "views", pairs_per_view, progress=progress))):
        samples, problems = build()
        if problems:
            raise RuntimeError(f"nano data: the written pictures did not load:\n{summarize(samples, problems)}")
        manifests.append(folder / f"{name}.jsonl")
        write_manifest(samples, manifests[-1])
    return manifests
