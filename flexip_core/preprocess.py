"""Reference image preprocessing: one function for training and for the nodes, so the
encoders see the same pixels in both.

Input: ComfyUI's IMAGE layout, float [B, H, W, C] in [0, 1], C = 1 (grey), 2 (grey + alpha),
3 (RGB) or 4 (RGBA). Output: [B, 3, S, S] normalised for the encoder described by an EncoderSpec.
"""
import torch
import torch.nn.functional as F

CROPS = ("center", "pad", "stretch")
# Transparent areas, padding and masked-out background become this grey: it carries no colour
# of its own and is what the preprocessing gives everywhere, in training and in the nodes.
BACKGROUND = 0.5


def to_rgb(images):
    """[B, H, W, C] with C in 1..4 -> [B, H, W, 3]; alpha is composited over BACKGROUND."""
    channels = images.shape[-1]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"an image needs 1 to 4 channels (grey, grey+alpha, RGB, RGBA), got {channels}")
    colour = images[..., : 1 if channels <= 2 else 3].expand(*images.shape[:-1], 3)
    if channels in (2, 4):
        alpha = images[..., -1:]
        colour = colour * alpha + BACKGROUND * (1.0 - alpha)
    return colour


def to_square(images, crop):
    """[B, 3, H, W] -> square: the central square, padded with BACKGROUND, or left as is for stretch."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    h, w = images.shape[-2:]
    if crop == "center":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return images[..., top:top + side, left:left + side]
    if crop == "pad":
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        return F.pad(images, (left, side - w - left, top, side - h - top), value=BACKGROUND)
    return images


def preprocess_reference(images, spec, crop="center", mask=None):
    """images [B, H, W, C] in [0, 1] -> [B, 3, S, S] float32 normalised with spec.mean / spec.std.

    mask: optional [B or 1, H, W] in [0, 1]; 0 marks background, which becomes BACKGROUND.
    """
    x = to_square(masked_rgb(images, mask), crop)
    size = spec.resolution
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return normalise(x, spec)


def preprocess_resize_crop(images, spec, resize, mask=None):
    """DINO's evaluation transform (torchvision's Resize(resize, bicubic) then CenterCrop(spec.resolution),
    on tensors): the shorter side resized to `resize` px, the central square of spec.resolution px,
    normalised. images [B, H, W, C] in [0, 1] -> [B, 3, S, S]; mask as for preprocess_reference."""
    x = masked_rgb(images, mask)
    h, w = x.shape[-2:]
    # torchvision's rounding: the longer side is truncated, the crop's offset rounded.
    size = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    crop = spec.resolution
    if resize < crop:
        raise ValueError(f"resize {resize} is smaller than the crop {crop}")
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    return normalise(x[..., top:top + crop, left:left + crop], spec)


def masked_rgb(images, mask=None):
    """images [B, H, W, C] in [0, 1] -> [B, 3, H, W] float RGB, background (mask 0) painted BACKGROUND."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected an image batch [B, H, W, C] with B >= 1, got shape {tuple(images.shape)}")
    rgb = to_rgb(images.float())
    if mask is not None:
        if mask.shape[-2:] != rgb.shape[1:3]:
            raise ValueError(f"mask is {tuple(mask.shape[-2:])} pixels but the image is {tuple(rgb.shape[1:3])}")
        keep = mask.float().reshape(-1, *mask.shape[-2:], 1)
        rgb = rgb * keep + BACKGROUND * (1.0 - keep)
    return rgb.movedim(-1, 1)


def normalise(x, spec):
    """[B, 3, S, S] pixels, clamped to [0, 1] (bicubic overshoots), normalised with spec.mean / spec.std."""
    x = x.clamp(0.0, 1.0)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
