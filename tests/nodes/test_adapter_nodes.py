"""PreservationAdapter and PersonalizationAdapter as ComfyUI runs them, with the full-shape random
FlexIP file: the tokens of each CFG pass come from the right inputs. COND: the reference (and the
prompt); UNCOND, as training drops them: P from a zeroed reference, S from the negative prompt
with a zeroed [CLS] (the positive prompt where no negative is connected). Expected values are
the adapter modules run in float64 on the inputs each pass must see."""
import copy

import pytest
import torch

from flexip_core import COND, UNCOND
from flexip_core.config import SD15
from flexip_core.reference import ReferenceFeatures
from flexip_core.weights import load_flexip

import random_models


@pytest.fixture(scope="module")
def flexip(comfy, pack):  # building the file reads the checkpoint, which ComfyUI's classes build
    return pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15()))


@pytest.fixture(scope="module")
def adapters64(flexip):
    """The file's two adapters in float64: the reference the nodes' float32 output is checked against."""
    return copy.deepcopy(flexip.preservation).double(), copy.deepcopy(flexip.personalization).double()


@pytest.fixture(scope="module")
def inputs():
    """A reference (random CLIP embeds and DINOv2 patches, shaped as the encoders give them), a
    prompt and a negative of the same length (so a node that mixes them up fails by value, not
    by shape)."""
    g = torch.Generator().manual_seed(0)
    reference = ReferenceFeatures(torch.randn(1, SD15.clip.dim, generator=g),
                                  torch.randn(1, 256, SD15.dino.dim, generator=g))
    positive = [[torch.randn(1, 77, SD15.text_dim, generator=g), {"pooled_output": torch.randn(1, 768)}]]
    negative = [[torch.randn(1, 77, SD15.text_dim, generator=g), {"pooled_output": torch.randn(1, 768)}]]
    return reference, positive, negative


def assert_matches(got, expected, what):
    """float32 node output against the float64 value, to float32 accuracy."""
    error = (got.double() - expected).abs().max().item()
    assert got.shape == expected.shape and error < 1e-4 * expected.abs().max().item(), f"{what}: off by {error:.3g}"


def assert_differ(a, b, what):
    assert (a.double() - b.double()).abs().max().item() > 1e-2 * b.abs().max().item(), what


@torch.no_grad()
def test_preservation_uncond_pass_is_the_dropped_reference(pack, flexip, adapters64, inputs):
    preservation64, _ = adapters64
    reference, _, _ = inputs
    (p,) = pack.nodes.adapters.PreservationAdapter().apply(flexip, reference)
    assert set(p) == {COND, UNCOND}
    cond = preservation64(reference.clip_embeds.double(), reference.dino_patches.double())
    dropped = preservation64(torch.zeros(1, SD15.clip.dim, dtype=torch.float64),
                             torch.zeros(1, 256, SD15.dino.dim, dtype=torch.float64))
    assert_matches(p[COND], cond, "P of the cond pass")
    assert_matches(p[UNCOND], dropped, "P of the uncond pass (zeroed reference)")
    assert_differ(cond, dropped, "the dropped reference must give other tokens than the reference")


@torch.no_grad()
def test_personalization_uncond_pass_is_the_negative_with_a_zeroed_cls(pack, flexip, adapters64, inputs):
    _, personalization64 = adapters64
    reference, positive, negative = inputs
    (s,) = pack.nodes.adapters.PersonalizationAdapter().apply(flexip, reference, positive, negative)
    assert set(s) == {COND, UNCOND}
    zero_cls = torch.zeros(1, 1, SD15.clip.dim, dtype=torch.float64)
    cond = personalization64(positive[0][0].double(), reference.clip_embeds.double()[None])
    uncond = personalization64(negative[0][0].double(), zero_cls)
    assert_matches(s[COND], cond, "S of the cond pass (prompt, reference)")
    assert_matches(s[UNCOND], uncond, "S of the uncond pass (negative, zeroed [CLS])")
    # Each of the two changes matters, so a node that drops only one of them fails above.
    assert_differ(uncond, personalization64(positive[0][0].double(), zero_cls), "the negative must matter")
    assert_differ(uncond, personalization64(negative[0][0].double(), reference.clip_embeds.double()[None]),
                  "the zeroed [CLS] must matter")


@torch.no_grad()
def test_personalization_without_negative_uses_the_prompt_with_a_zeroed_cls(pack, flexip, adapters64, inputs):
    _, personalization64 = adapters64
    reference, positive, _ = inputs
    (s,) = pack.nodes.adapters.PersonalizationAdapter().apply(flexip, reference, positive)
    zero_cls = torch.zeros(1, 1, SD15.clip.dim, dtype=torch.float64)
    assert_matches(s[UNCOND], personalization64(positive[0][0].double(), zero_cls),
                   "S of the uncond pass without a negative (prompt, zeroed [CLS])")
    assert_differ(s[UNCOND], s[COND], "the uncond pass must not repeat the cond pass")
