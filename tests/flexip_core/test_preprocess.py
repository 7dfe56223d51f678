"""Reference preprocessing: colour handling, square modes, mask, size and normalisation."""
import pytest
import torch

from flexip_core.config import SD15, TINY, EncoderSpec
from flexip_core.preprocess import BACKGROUND, preprocess_reference, to_rgb, to_square

UNIT = EncoderSpec("image_embeds", 1, 4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # no normalisation


def test_grey_becomes_three_equal_channels():
    grey = torch.rand(2, 5, 7, 1)
    rgb = to_rgb(grey)
    assert rgb.shape == (2, 5, 7, 3) and torch.equal(rgb[..., 0], grey[..., 0]) and torch.equal(rgb[..., 2], grey[..., 0])


def test_alpha_is_composited_over_the_background():
    rgba = torch.rand(1, 3, 3, 4)
    rgba[..., 3] = torch.tensor([[0.0, 1.0, 0.5]] * 3)
    rgb = to_rgb(rgba)
    assert torch.allclose(rgb[:, :, 0], torch.full((1, 3, 3), BACKGROUND))
    assert torch.equal(rgb[:, :, 1], rgba[:, :, 1, :3])
    assert torch.allclose(rgb[:, :, 2], 0.5 * rgba[:, :, 2, :3] + 0.5 * BACKGROUND)
    grey_alpha = torch.stack((torch.full((1, 2, 2), 0.2), torch.zeros(1, 2, 2)), dim=-1)
    assert torch.allclose(to_rgb(grey_alpha), torch.full((1, 2, 2, 3), BACKGROUND))


def test_five_channels_are_refused():
    with pytest.raises(ValueError, match="1 to 4 channels"):
        to_rgb(torch.rand(1, 2, 2, 5))


def test_square_modes():
    wide = torch.arange(2 * 6, dtype=torch.float32).reshape(1, 1, 2, 6).expand(1, 3, 2, 6)
    center = to_square(wide, "center")
    assert center.shape[-2:] == (2, 2) and torch.equal(center, wide[..., 2:4])
    padded = to_square(wide, "pad")
    assert padded.shape[-2:] == (6, 6)
    assert torch.equal(padded[..., 2:4, :], wide) and (padded[..., :2, :] == BACKGROUND).all()
    assert torch.equal(to_square(wide, "stretch"), wide)
    with pytest.raises(ValueError, match="center, pad, stretch"):
        to_square(wide, "zoom")


def test_output_size_dtype_and_normalisation():
    images = torch.rand(3, 50, 40, 3, dtype=torch.float64)
    out = preprocess_reference(images, SD15.dino)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    white = preprocess_reference(torch.ones(1, 8, 8, 3), SD15.clip)
    expected = [(1 - m) / s for m, s in zip(SD15.clip.mean, SD15.clip.std)]
    assert torch.allclose(white[0, :, 0, 0], torch.tensor(expected))


def test_an_image_at_the_target_size_is_not_resampled():
    images = torch.rand(1, 4, 4, 3)
    assert torch.equal(preprocess_reference(images, UNIT), images.movedim(-1, 1))


def test_mask_blanks_the_background():
    images = torch.rand(2, 4, 4, 3)
    mask = torch.zeros(1, 4, 4)
    mask[:, :2] = 1.0
    out = preprocess_reference(images, UNIT, mask=mask)
    assert torch.equal(out[:, :, :2], images.movedim(-1, 1)[:, :, :2])
    assert (out[:, :, 2:] == BACKGROUND).all()
    with pytest.raises(ValueError, match="mask is"):
        preprocess_reference(images, UNIT, mask=torch.ones(1, 3, 3))


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match="B >= 1"):
        preprocess_reference(torch.zeros(0, 8, 8, 3), TINY.clip)
