"""Manifest builders: a folder of images, of videos (or frame folders) or of multi-view sets ->
samples, and the problems that kept the others out (each with its path; nothing raises).

Folder conventions (searched recursively; names are case-insensitive for extensions):

images     Every .png/.jpg/.jpeg/.webp is one invariant sample: reference and target are the same
           picture (the dataset lightly augments the reference). Caption: the sidecar <name>.txt
           next to it. Optional masks (white = subject, the picture's size): <name>.mask.png, the
           reference's (the encoders see the rest greyed out), and <name>.loss.mask.png, the
           target's (the loss weighs the subject by the run option loss.subject_weight).
videos     Every .mp4/.webm/.mkv/.mov/.avi with a sidecar caption <name>.txt; and every frame
           folder, a folder of numbered images (frame_0001.png, 2.jpg: the number at the end of
           the name orders them) with caption.txt inside. One sample each, frames left to the
           dataset (a random pair min_gap..max_gap apart, new every epoch). A video with fewer
           than max(2, min_gap + 1) frames is a bad sample. Frame counts come from the container,
           or from decoding where it stores none; verify=True decodes every video (and frame) to
           find files cut short whose header promises more frames than they hold.
multiview  Every folder below FOLDER that holds images directly is one object and its images are
           the views (sorted by name). Caption: caption.txt in the object folder, or a per-view
           <view>.txt (which wins: the caption describes the target view). Optional per-view mask
           <view>.mask.png. Pairs: each view is the reference once for each of the next
           pairs_per_view views (by name, wrapping around) as target; so an object with V views
           gives V * min(pairs_per_view, V - 1) samples, weighting objects by their view count,
           and every view is a target as often as a reference. A view that cannot be read or has
           no caption is left out (reported); an object left with fewer than 2 views is a bad sample.
           Optional per-view masks as for images: a view's <view>.mask.png goes with it as the
           reference, its <view>.loss.mask.png as the target.

Bad samples (unreadable image or mask, a mask of the wrong size, an unreadable or too short video,
a missing caption) are reported with their path and skipped.
"""
import os
from pathlib import Path

import av
from tqdm import tqdm

from .manifest import MIN_GAP, Problem, Sample
from .media import (MASK_SUFFIX, VIDEO_EXTENSIONS, count_decoded_frames, frame_count, is_image_file, list_frames,
                    load_image, load_mask, video_stream)

CAPTION_FILE = "caption.txt"
CHECK_SIDE = 64  # the builders decode images (a JPEG at a reduced scale) only to prove they decode
# The target's subject mask for the loss; it ends in media.MASK_SUFFIX, so it is never taken for a picture.
LOSS_MASK_SUFFIX = ".loss" + MASK_SUFFIX


def read_caption(path):
    """A sidecar caption's text, stripped; None when the file is missing or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def _walk(folder):
    """(directory, sorted file names) for folder and every folder below it, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    for directory, subfolders, files in os.walk(folder):
        subfolders.sort()
        yield Path(directory), sorted(files)


def _message(error):
    return str(error) or type(error).__name__


def _check_picture(path, caption, caption_hint):
    """((mask path or None, loss mask path or None), Problem or None) for an image or view: it
    decodes, it has a caption, and its optional <name>.mask.png and <name>.loss.mask.png decode at
    the picture's size."""
    try:
        size = load_image(path, CHECK_SIDE)[1]
    except Exception as error:  # decoders raise many types (OSError, SyntaxError, ValueError...)
        return (None, None), Problem(str(path), "unreadable image", _message(error))
    if not caption:
        return (None, None), Problem(str(path), "missing caption", caption_hint)
    masks = []
    for suffix, reason in ((MASK_SUFFIX, "bad mask"), (LOSS_MASK_SUFFIX, "bad loss mask")):
        mask = path.with_name(path.stem + suffix)
        if not mask.is_file():
            masks.append(None)
            continue
        try:
            load_mask(mask, size)
        except Exception as error:
            return (None, None), Problem(str(mask), reason, _message(error))
        masks.append(str(mask))
    return tuple(masks), None


def _progress(items, description, progress):
    return tqdm(items, desc=description, unit="file", disable=not progress, dynamic_ncols=True)


def images_manifest(folder, progress=True):
    """-> (samples, problems) for a folder of images (see the module docstring)."""
    paths = [d / name for d, files in _walk(folder) for name in files if is_image_file(name)]
    samples, problems = [], []
    for path in _progress(paths, f"images in {folder}", progress):
        caption = read_caption(path.with_suffix(".txt"))
        (mask, loss_mask), problem = _check_picture(path, caption, f"no {path.with_suffix('.txt').name}")
        if problem:
            problems.append(problem)
            continue
        samples.append(Sample("image", (str(path),), str(path), caption, mask=mask, loss_mask=loss_mask))
    return samples, problems


def videos_manifest(folder, min_gap=MIN_GAP, verify=False, progress=True):
    """-> (samples, problems) for a folder of videos and frame folders (see the module docstring)."""
    if min_gap < 1:
        raise ValueError(f"min_gap must be at least 1, got {min_gap}")
    needed = max(2, min_gap + 1)
    clips = []  # (path, caption file)
    for directory, files in _walk(folder):
        clips += [(directory / n, directory / (Path(n).stem + ".txt")) for n in files
                  if Path(n).suffix.lower() in VIDEO_EXTENSIONS]
        if list_frames(directory):
            clips.append((directory, directory / CAPTION_FILE))
    samples, problems = [], []
    for path, caption_file in _progress(clips, f"videos in {folder}", progress):
        caption = read_caption(caption_file)
        if caption is None:
            problems.append(Problem(str(path), "missing caption", f"no {caption_file.name}"))
            continue
        try:
            count = _verified_frame_count(path) if verify else frame_count(path)
        except Exception as error:
            problems.append(Problem(str(path), "unreadable video", _message(error)))
            continue
        if count < needed:
            problems.append(Problem(str(path), "too few frames",
                                    f"{count} frame{'s' * (count != 1)}, needs {needed} (min gap {min_gap})"))
            continue
        samples.append(Sample("video", (str(path),), str(path), caption))
    return samples, problems


def _verified_frame_count(path):
    """Frames that really decode; raises when a frame does not or the header promised more."""
    if path.is_dir():
        frames = list_frames(path)
        for frame in frames:
            try:
                load_image(frame, CHECK_SIDE)
            except Exception as error:
                raise ValueError(f"frame {frame.name}: {_message(error)}") from error
        return len(frames)
    with av.open(str(path)) as container:
        stream = video_stream(container)
        promised = stream.frames
        decoded = count_decoded_frames(container, stream)
    if promised and decoded < promised:
        raise ValueError(f"cut short: the header says {promised} frames, {decoded} decode")
    return decoded


def multiview_manifest(folder, pairs_per_view=1, progress=True):
    """-> (samples, problems) for a folder of multi-view sets (see the module docstring)."""
    if pairs_per_view < 1:
        raise ValueError(f"pairs_per_view must be at least 1, got {pairs_per_view}")
    root = Path(folder)
    objects, problems = [], []
    for directory, files in _walk(root):
        views = [directory / n for n in files if is_image_file(n)]
        if directory == root:
            problems += [Problem(str(v), "not in an object folder", "views go in one sub-folder per object")
                         for v in views]
        elif views:
            objects.append((directory, views))
    samples = []
    for directory, views in _progress(objects, f"multi-view sets in {folder}", progress):
        shared_caption = read_caption(directory / CAPTION_FILE)
        good = []  # (view, caption, (mask, loss mask))
        for view in views:
            caption = read_caption(view.with_suffix(".txt")) or shared_caption
            masks, problem = _check_picture(view, caption, f"no {CAPTION_FILE} or {view.with_suffix('.txt').name}")
            if problem:
                problems.append(problem)
            else:
                good.append((view, caption, masks))
        if len(good) < 2:
            views = f"{len(good)} usable view{'s' * (len(good) != 1)}"
            problems.append(Problem(str(directory), "too few views", views))
            continue
        for i, (reference, _, (mask, _)) in enumerate(good):
            for step in range(1, min(pairs_per_view, len(good) - 1) + 1):
                target, caption, (_, loss_mask) = good[(i + step) % len(good)]
                samples.append(Sample("multiview", (str(reference),), str(target), caption, mask=mask,
                                      loss_mask=loss_mask))
    return samples, problems


BUILDERS = {"images": images_manifest, "videos": videos_manifest, "multiview": multiview_manifest}
