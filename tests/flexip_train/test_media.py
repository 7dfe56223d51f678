"""The files a sample names: frame order and count, frames by index, image and mask loading."""
import numpy as np
import pytest
from PIL import Image

from flexip_core.preprocess import BACKGROUND
from flexip_train.media import TooFewFrames, frame_count, list_frames, load_image, load_mask, read_frames

from tests.flexip_train.conftest import level_to_frame, write_frame_folder, write_image, write_video


def test_frame_folder_order_and_count(tmp_path):
    folder = write_frame_folder(tmp_path / "f", 12)
    (folder / "cover.png").write_bytes(b"")      # no number: not a frame
    (folder / "frame_3.mask.png").write_bytes(b"")  # a mask: not a frame
    names = [p.name for p in list_frames(folder)]
    assert names == [f"frame_{i}.png" for i in range(1, 13)]
    assert frame_count(folder) == 12
    frames = read_frames(folder, [10, 2])
    assert {i: level_to_frame(np.asarray(f).mean()) for i, f in frames.items()} == {2: 2, 10: 10}
    with pytest.raises(TooFewFrames, match="12 frames, frame 12 asked for"):
        read_frames(folder, [0, 12])


def test_video_frame_count_and_frames(tmp_path):
    mp4, mkv = write_video(tmp_path / "v.mp4", 9), write_video(tmp_path / "v.mkv", 7)
    assert frame_count(mp4) == 9 and frame_count(mkv) == 7  # MKV: counted by decoding
    frames = read_frames(mp4, [7, 1])
    assert sorted(frames) == [1, 7] and frames[7].size == (64, 64)
    assert level_to_frame(np.asarray(frames[7])[32:, :, 0].mean()) == 7
    assert level_to_frame(np.asarray(frames[1])[32:, :, 0].mean()) == 1
    with pytest.raises(TooFewFrames, match="ends after 9 frames, frame 9 asked for"):
        read_frames(mp4, [0, 9])


def test_load_image_alpha_orientation_and_draft(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :3, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    image, size = load_image(tmp_path / "alpha.png")
    pixels = np.asarray(image)
    assert image.mode == "RGB" and size == (6, 4)
    assert (pixels[:, :3] == 200).all() and (pixels[:, 3:] == round(255 * BACKGROUND)).all()
    # a photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)
    stored = Image.fromarray(np.tile(np.arange(60, dtype=np.uint8)[None, :, None] * 4, (40, 1, 3)))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    upright, size = load_image(tmp_path / "sideways.jpg")
    assert size == (40, 60) and upright.size == (40, 60)
    column = np.asarray(upright)[:, 20, 0].astype(int)
    assert column[0] < 20 and column[-1] > 200  # the stored left-to-right ramp now runs top to bottom
    # a large JPEG decodes at a reduced scale that keeps the shorter side at least min_side
    stored.resize((600, 400)).save(tmp_path / "large.jpg")
    small, size = load_image(tmp_path / "large.jpg", min_side=90)
    assert size == (600, 400) and min(small.size) >= 90 and small.size[0] < 600
    assert load_mask(write_image(tmp_path / "m.png", (6, 4)), (6, 4)).mode == "L"
    with pytest.raises(ValueError, match="the mask is 6x4 but its image is 4x6"):
        load_mask(tmp_path / "m.png", (4, 6))
