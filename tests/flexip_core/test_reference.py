"""Several references: average and concat give P and S of the documented shapes; the dropped
reference is all zeros."""
import pytest
import torch

from flexip_core import TINY, FlexIP
from flexip_core.reference import ReferenceFeatures, personalization_tokens, preservation_tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlexIP(TINY).eval()


def features(n, combine):
    g = torch.Generator().manual_seed(n)
    return ReferenceFeatures(torch.randn(n, TINY.clip.dim, generator=g),
                             torch.randn(n, 9, TINY.dino.dim, generator=g), combine)


@torch.no_grad()
def test_average_of_one_reference_is_that_reference(model):
    one = features(1, "average")
    direct = model.preservation(one.clip_embeds, one.dino_patches)
    assert torch.equal(preservation_tokens(model.preservation, one), direct)
    text = torch.randn(1, 77, TINY.text_dim)
    assert torch.allclose(personalization_tokens(model.personalization, text, one),
                          model.personalization(text, one.clip_embeds))


@torch.no_grad()
def test_shapes_for_three_references(model):
    n_p = TINY.num_latent_queries + TINY.num_clip_tokens
    text = torch.randn(1, 154, TINY.text_dim)
    assert preservation_tokens(model.preservation, features(3, "average")).shape == (1, n_p, TINY.context_dim)
    assert preservation_tokens(model.preservation, features(3, "concat")).shape == (1, 3 * n_p, TINY.context_dim)
    for combine in ("average", "concat"):
        assert personalization_tokens(model.personalization, text, features(3, combine)).shape == (1, 154, TINY.context_dim)


@torch.no_grad()
def test_concat_keeps_each_reference(model):
    three = features(3, "concat")
    p = preservation_tokens(model.preservation, three)
    second = model.preservation(three.clip_embeds[1:2], three.dino_patches[1:2])
    n_p = TINY.num_latent_queries + TINY.num_clip_tokens
    assert torch.allclose(p[:, n_p:2 * n_p], second, atol=1e-5)
    # Every reference's [CLS] reaches S.
    text = torch.randn(1, 77, TINY.text_dim)
    changed = ReferenceFeatures(three.clip_embeds.clone(), three.dino_patches, "concat")
    changed.clip_embeds[2] += 1.0
    assert not torch.allclose(personalization_tokens(model.personalization, text, three),
                              personalization_tokens(model.personalization, text, changed))


def test_dropped_is_zeros_and_bad_inputs_are_refused():
    dropped = features(2, "concat").dropped()
    assert not dropped.clip_embeds.any() and not dropped.dino_patches.any() and dropped.combine == "concat"
    with pytest.raises(ValueError, match="combine"):
        ReferenceFeatures(torch.zeros(1, 4), torch.zeros(1, 2, 4), "sum")
    with pytest.raises(ValueError, match="one or more references"):
        ReferenceFeatures(torch.zeros(2, 4), torch.zeros(1, 2, 4))
