"""The stand-in encoders (benchmarks/nano/encoders.py): shapes, the contrastive loss, augmentation."""
import math

import numpy as np
import torch

from benchmarks.nano import encoders, world


def test_encoders_give_a_global_vector_and_patch_tokens():
    pictures = world.Renderer().render([0, 5, 100], [0, 7, 35])
    clip, dino = encoders.Encoders()(pictures)
    assert clip.shape == (3, encoders.DIM) and dino.shape == (3, (world.SIZE // encoders.PATCH) ** 2, encoders.DIM)
    caption = encoders.CaptionEncoder()(["a small red circle at the left on grass", "a large square"])
    assert caption.shape == (2, encoders.DIM)


def test_info_nce_counts_equal_captions_as_matches():
    """Against the formula by hand, in float64: rows 0 and 2 share a caption, so each is half the
    other's target."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    same = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    cos = [[float(a[i] @ b[j] / (a[i].norm() * b[j].norm())) / encoders.TEMPERATURE for j in range(3)] for i in range(3)]

    def ce(logits, targets):
        return -sum(t * (l - math.log(sum(math.exp(x) for x in logits))) for l, t in zip(logits, targets))

    targets = [[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]
    rows = sum(ce(cos[i], targets[i]) for i in range(3)) / 3
    columns = sum(ce([cos[j][i] for j in range(3)], targets[i]) for i in range(3)) / 3
    assert encoders.info_nce(a, b, same).item() == __import__("pytest").approx((rows + columns) / 2, rel=1e-12)
    assert encoders.info_nce(a, b).item() != encoders.info_nce(a, b, same).item()


def test_augmentation_stays_light_and_flips_only_when_allowed():
    scene = world.Scene("sky", "left", "large")
    pictures = world.Renderer().render([3] * 40, [scene.id] * 40)
    sky = torch.tensor(world.BACKGROUNDS["sky"]) / 255

    def subject_x(batch):  # the horizontal centre of the pixels far from the sky's colour
        weight = ((batch - sky).abs().sum(-1) > 0.3).float()
        return (weight * torch.arange(world.SIZE)).sum((1, 2)) / weight.sum((1, 2))

    for flip in (True, False):
        out = encoders.augment(pictures, np.random.default_rng(0), flip=flip)
        assert out.shape == pictures.shape and out.min() >= 0 and out.max() <= 1
        x = subject_x(out)
        assert ((x > 16).any() if flip else (x < 16).all()), x  # the subject is drawn at x = 9
