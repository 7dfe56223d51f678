"""Small data folders made in the test: images, videos written with PyAV, frame folders and
multi-view sets, each with the bad samples the builders and the dataset must report."""
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

VIDEO_SIDE = 64


def frame_level(i):
    """A video frame's grey level: the frame index can be read back from a decoded frame."""
    return 10 + 20 * i


def level_to_frame(level):
    return round((level - 10) / 20)


def textured(width, height, seed):
    """A smooth picture (gradients and a blob) with a little noise: resampling and crops change
    it gradually, as they would a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    blob = np.exp(-((x - 0.5 * width / max(width, height)) ** 2 + (y - 0.45) ** 2) / 0.05)
    channels = [0.25 + 0.5 * y, 0.3 + 0.4 * blob, 0.6 - 0.3 * y + 0.2 * blob]
    pixels = np.stack(channels, -1) + rng.normal(0, 0.02, (height, width, 3))
    return Image.fromarray((pixels.clip(0, 1) * 255).astype(np.uint8))


def write_image(path, size=(48, 40), seed=0, caption="a test picture"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    textured(*size, seed).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")
    return path


def write_video(path, frames=12, caption="a test clip", faststart=False):
    """frames frames of VIDEO_SIDE px, MPEG-4 Part 2 (encodable by every PyAV build); frame i is
    grey at frame_level(i) with a bright square that moves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width = stream.height = VIDEO_SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            pixels = np.full((VIDEO_SIDE, VIDEO_SIDE, 3), frame_level(i), np.uint8)
            pixels[4:12, 4 + 3 * i:12 + 3 * i] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def write_frame_folder(folder, frames, caption="a test frame folder", name="frame_{}.png"):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        pixels = np.full((VIDEO_SIDE, VIDEO_SIDE, 3), frame_level(i), np.uint8)
        Image.fromarray(pixels).save(folder / name.format(i + 1))  # numbered from 1, unpadded
    if caption is not None:
        (folder / "caption.txt").write_text(caption)
    return folder


def cut_in_half(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:len(data) // 2])
    return path


def write_mask(path, size):
    """White (subject) on the left half, black elsewhere."""
    pixels = np.zeros((size[1], size[0]), np.uint8)
    pixels[:, :size[0] // 2] = 255
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    good = {"cat": write_image(root / "cat.png", (48, 40), 1, "a grey cat"),
            "dog": write_image(root / "dog.jpg", (40, 56), 2, "a brown dog"),
            "bird": write_image(root / "nested" / "bird.webp", (32, 32), 3, "a small bird")}
    write_mask(root / "cat.mask.png", (48, 40))
    bad = {"missing caption": [write_image(root / "no_caption.png", caption=None),
                               write_image(root / "blank_caption.png", caption="  \n")],
           "unreadable image": [root / "corrupt.png", cut_in_half(write_image(root / "truncated.png", (64, 64), 4))],
           "bad mask": [root / "masked.mask.png"]}
    (root / "corrupt.png").write_bytes(b"this is not a PNG file")
    (root / "corrupt.txt").write_text("a corrupt file")
    write_image(root / "masked.png", (48, 40), 5, "a picture whose mask has the wrong size")
    write_mask(root / "masked.mask.png", (20, 20))
    (root / "notes.md").write_text("not an image: ignored")
    return root, good, bad


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    good = {"mp4": write_video(root / "walk.mp4", 12, "a walk"),
            "mkv": write_video(root / "clips" / "turn.mkv", 12, "a turn"),  # MKV stores no frame count
            "frames": write_frame_folder(root / "frames_a", 11),  # frame_10 sorts after frame_9
            "cut_faststart": cut_in_half(write_video(root / "cut_faststart.mp4", 12, "cut, header first",
                                                     faststart=True))}
    bad = {"too few frames": [write_video(root / "one_frame.mp4", 1), write_video(root / "three_frames.mp4", 3),
                              write_frame_folder(root / "frames_one", 1)],
           "unreadable video": [cut_in_half(write_video(root / "truncated.mp4", 12))],
           "missing caption": [write_video(root / "no_caption.mp4", 12, caption=None),
                               write_frame_folder(root / "frames_no_caption", 6, caption=None)]}
    return root, good, bad


@pytest.fixture(scope="session")
def multiview_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiview")
    mug = [write_image(root / "mug" / f"{i}.png", (40, 40), 10 + i, caption=None) for i in range(3)]
    (root / "mug" / "caption.txt").write_text("a red mug")
    write_mask(root / "mug" / "1.mask.png", (40, 40))
    shoe = [write_image(root / "shoes" / "shoe" / name, (40, 48), 20 + k, caption=f"a shoe, view {name[0]}")
            for k, name in enumerate(("a.png", "b.jpg"))]
    partial = [write_image(root / "partial" / "0.png", seed=30, caption="view 0"),
               write_image(root / "partial" / "1.png", seed=31, caption="view 1"),
               write_image(root / "partial" / "2.png", seed=32, caption=None)]
    write_image(root / "lonely" / "0.png", seed=40, caption="the only view")
    write_image(root / "broken" / "0.png", seed=50, caption=None)
    (root / "broken" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "broken" / "caption.txt").write_text("a broken set")
    write_image(root / "stray.png", seed=60)
    good = {"mug": mug, "shoe": shoe, "partial": partial[:2]}
    bad = {"missing caption": [partial[2]], "unreadable image": [root / "broken" / "1.png"],
           "too few views": [root / "lonely", root / "broken"], "not in an object folder": [root / "stray.png"]}
    return root, good, bad
