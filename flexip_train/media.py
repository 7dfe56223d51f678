"""The files a training sample names: finding and decoding pictures, masks and video frames
(PIL and PyAV), as the builders and the dataset read them.

A source is a path or, for samples read from tar shards (flexip_train.shards), an open binary
file; a frame folder from a shard is the list of its frames' files, in order."""
import math
import re
from pathlib import Path

import av
from PIL import Image, ImageOps

from flexip_core.preprocess import BACKGROUND

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
MASK_SUFFIX = ".mask.png"
ORIENTATION_TAG = 0x0112  # EXIF


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def is_image_file(path):
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.lower().endswith(MASK_SUFFIX)


def list_frames(folder):
    """A frame folder's frames in order: its images whose names end in a number, by that number."""
    numbered = []
    for path in Path(folder).iterdir():
        match = _TRAILING_NUMBER.search(path.stem)
        if match and path.is_file() and is_image_file(path):
            numbered.append((int(match.group(1)), path.name, path))
    return [path for _, _, path in sorted(numbered)]


def load_image(path, min_side=None):
    """-> (RGB PIL image, its full (width, height)). Upright per EXIF; transparency composited over
    the preprocessing's BACKGROUND grey. min_side: a JPEG may be decoded at a reduced scale whose
    shorter side is still at least this (far faster for photos larger than the training size)."""
    with Image.open(path) as image:
        full_size = _upright_size(image)
        if min_side is not None:
            image.draft("RGB", _draft_request(full_size, image.size, min_side))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            grey = Image.new("RGBA", rgba.size, (round(255 * BACKGROUND),) * 3 + (255,))
            return Image.alpha_composite(grey, rgba).convert("RGB"), full_size
        return image.convert("RGB"), full_size


def _upright_size(image):
    width, height = image.size
    return (height, width) if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8) else (width, height)


def _draft_request(upright, stored, min_side):
    scale = min_side / min(upright)  # draft() keeps both sides at least the requested ones
    return (math.ceil(stored[0] * scale), math.ceil(stored[1] * scale))


def load_mask(path, size):
    """A mask as a greyscale PIL image (white = subject); it must be size (width, height) upright."""
    with Image.open(path) as mask:
        mask = ImageOps.exif_transpose(mask).convert("L")
    if mask.size != tuple(size):
        raise ValueError(f"the mask is {mask.size[0]}x{mask.size[1]} but its image is {size[0]}x{size[1]}")
    return mask


def _is_frame_list(source):
    return isinstance(source, (list, tuple))


def _video_source(source):
    return source if hasattr(source, "read") else str(source)


def frame_count(path):
    """Frames in a frame folder (or list of frames), or in a video's first video stream: the
    container's count, or, where the container does not store one (WebM, MKV), by decoding.
    Raises what PyAV raises."""
    if _is_frame_list(path):
        return len(path)
    if not hasattr(path, "read") and Path(path).is_dir():
        return len(list_frames(path))
    with av.open(_video_source(path)) as container:
        stream = video_stream(container)
        return stream.frames or count_decoded_frames(container, stream)


def count_decoded_frames(container, stream):
    stream.thread_type = "AUTO"
    return sum(1 for _ in container.decode(stream))


def video_stream(container):
    if not container.streams.video:
        raise ValueError("no video stream")
    return container.streams.video[0]


class TooFewFrames(ValueError):
    """A frame index past a video's or frame folder's last frame."""


def read_frames(path, indices, min_side=None):
    """{index: RGB PIL image} for frame indices of a video or frame folder (min_side: as for
    load_image, for a folder's JPEG frames). A video is decoded from its start: frame numbers then
    mean the same in every container, variable frame rates included. Raises TooFewFrames when there
    are fewer frames."""
    wanted = sorted(set(indices))
    if _is_frame_list(path) or (not hasattr(path, "read") and Path(path).is_dir()):
        frames = path if _is_frame_list(path) else list_frames(path)
        if wanted[-1] >= len(frames):
            raise TooFewFrames(f"the frame folder has {len(frames)} frames, frame {wanted[-1]} asked for")
        return {i: load_image(frames[i], min_side)[0] for i in wanted}
    found, decoded = {}, 0
    with av.open(_video_source(path)) as container:
        stream = video_stream(container)
        stream.thread_type = "AUTO"
        for decoded, frame in enumerate(container.decode(stream), start=1):
            if decoded - 1 in wanted:
                found[decoded - 1] = frame.to_image()
            if decoded > wanted[-1]:
                break
    if len(found) < len(wanted):
        raise TooFewFrames(f"the video ends after {decoded} frame{'s' * (decoded != 1)}, frame {wanted[-1]} asked for")
    return found
