"""The two adapters: token counts and widths for both configs, which inputs each output token
depends on, and the FlexIP parameter count against a formula derived from the config."""
import pytest
import torch

from flexip_core.adapters import ClipTokens, PersonalizationAdapter, PreservationAdapter
from flexip_core.config import SD15, TINY
from flexip_core.model import FlexIP


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def sd15_adapters():
    torch.manual_seed(0)
    return PreservationAdapter(SD15).eval(), PersonalizationAdapter(SD15).eval()


@pytest.fixture(scope="module")
def tiny_adapters():
    torch.manual_seed(0)
    return PreservationAdapter(TINY).double().eval(), PersonalizationAdapter(TINY).double().eval()


def tiny_inputs(batch, n_text=7, n_patches=9, seed=0):
    d = torch.float64
    return (randn(batch, TINY.clip.dim, seed=seed, dtype=d),
            randn(batch, n_patches, TINY.dino.dim, seed=seed + 1, dtype=d),
            randn(batch, n_text, TINY.text_dim, seed=seed + 2, dtype=d))


# ----------------------------------------------------------------------------------------------
# Shapes.

def test_sd15_config_values_used_below():
    """The sizes the design document names (SD1.5, CLIP ViT-H image_embeds, DINOv2-L patches)."""
    assert (SD15.num_latent_queries, SD15.num_clip_tokens) == (16, 4)
    assert (SD15.context_dim, SD15.text_dim) == (768, 768)
    assert (SD15.clip.dim, SD15.dino.dim) == (1024, 1024)
    assert SD15.width % SD15.heads == 0 and TINY.width % TINY.heads == 0


def test_sd15_preservation_shape(sd15_adapters):
    preservation, _ = sd15_adapters
    with torch.no_grad():
        p = preservation(randn(1, 1024, seed=1), randn(1, 256, 1024, seed=2))
    assert p.shape == (1, 16 + 4, 768)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()


@pytest.mark.parametrize("n_text", [77, 154, 231])
def test_sd15_personalization_shape(sd15_adapters, n_text):
    _, personalization = sd15_adapters
    with torch.no_grad():
        s = personalization(randn(1, n_text, 768, seed=n_text), randn(1, 1024, seed=1))
    assert s.shape == (1, n_text, 768)
    assert torch.isfinite(s).all()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_text", [1, 77, 154, 231])
def test_tiny_shapes(tiny_adapters, batch, n_text):
    preservation, personalization = tiny_adapters
    clip, dino, text = tiny_inputs(batch, n_text=n_text)
    with torch.no_grad():
        p = preservation(clip, dino)
        s = personalization(text, clip)
    assert p.shape == (batch, TINY.num_latent_queries + TINY.num_clip_tokens, TINY.context_dim)
    assert s.shape == (batch, n_text, TINY.context_dim)


def test_clip_tokens_shape():
    tokens = ClipTokens(TINY.clip.dim, 3, TINY.width)
    assert tokens(torch.randn(2, TINY.clip.dim)).shape == (2, 3, TINY.width)


def test_zeroed_reference_gives_finite_p_and_s(tiny_adapters):
    """The uncond pass uses a zeroed reference / zeroed [CLS]: constant inputs must not blow up LayerNorms."""
    preservation, personalization = tiny_adapters
    _, _, text = tiny_inputs(2)
    zero_clip = torch.zeros(2, TINY.clip.dim, dtype=torch.float64)
    zero_dino = torch.zeros(2, 9, TINY.dino.dim, dtype=torch.float64)
    with torch.no_grad():
        assert torch.isfinite(preservation(zero_clip, zero_dino)).all()
        assert torch.isfinite(personalization(text, zero_clip)).all()


# ----------------------------------------------------------------------------------------------
# Which inputs each token depends on.

def _max_diff_per_token(a, b):
    return (a - b).abs().amax(dim=-1)  # [B, N]


def test_p_latent_tokens_ignore_clip_identity_tokens_use_it(tiny_adapters):
    preservation, _ = tiny_adapters
    clip, dino, _ = tiny_inputs(2, seed=10)
    clip2 = randn(2, TINY.clip.dim, seed=99, dtype=torch.float64)
    n_l = TINY.num_latent_queries
    with torch.no_grad():
        p1, p2 = preservation(clip, dino), preservation(clip2, dino)
    assert torch.equal(p1[:, :n_l], p2[:, :n_l])                    # latent-query branch: no CLIP
    assert (_max_diff_per_token(p1[:, n_l:], p2[:, n_l:]) > 1e-6).all()  # every CLS token: CLIP


def test_sd15_p_latent_tokens_ignore_clip(sd15_adapters):
    preservation, _ = sd15_adapters
    dino = randn(1, 256, 1024, seed=3)
    with torch.no_grad():
        p1 = preservation(randn(1, 1024, seed=4), dino)
        p2 = preservation(randn(1, 1024, seed=5), dino)
    assert torch.equal(p1[:, :16], p2[:, :16])
    assert (_max_diff_per_token(p1[:, 16:], p2[:, 16:]) > 1e-4).all()


def test_every_p_token_depends_on_dino(tiny_adapters):
    preservation, _ = tiny_adapters
    clip, dino, _ = tiny_inputs(2, seed=11)
    dino2 = dino.clone()
    dino2[:, 4] += randn(TINY.dino.dim, seed=5, dtype=torch.float64)   # one patch changed
    with torch.no_grad():
        diff = _max_diff_per_token(preservation(clip, dino), preservation(clip, dino2))
    assert (diff > 1e-6).all(), diff


def test_p_is_concat_of_detail_then_identity(tiny_adapters):
    """Order matters for the trained projections: N_L latent-query tokens first, then N_C CLIP tokens."""
    preservation, _ = tiny_adapters
    clip, dino, _ = tiny_inputs(2, seed=12)
    with torch.no_grad():
        p = preservation(clip, dino)
        detail = preservation.resampler_latent(preservation.latent_queries.expand(2, -1, -1), dino)
        identity = preservation.resampler_clip(preservation.clip_tokens(clip), dino)
    torch.testing.assert_close(p, torch.cat((detail, identity), dim=1), rtol=0, atol=0)


def test_s_depends_on_clip_in_every_token(tiny_adapters):
    _, personalization = tiny_adapters
    clip, _, text = tiny_inputs(2, n_text=7, seed=13)
    clip2 = randn(2, TINY.clip.dim, seed=77, dtype=torch.float64)
    with torch.no_grad():
        diff = _max_diff_per_token(personalization(text, clip), personalization(text, clip2))
    assert (diff > 1e-6).all(), diff


def test_s_tokens_interact_through_the_resampler(tiny_adapters):
    """Queries attend to concat(memory, queries), so S token i depends on every text token j,
    not on token i alone (measured here, not assumed)."""
    _, personalization = tiny_adapters
    clip, _, text = tiny_inputs(1, n_text=6, seed=14)
    with torch.no_grad():
        base = personalization(text, clip)
        for j in range(6):
            text2 = text.clone()
            text2[:, j] += randn(TINY.text_dim, seed=j, dtype=torch.float64)
            diff = _max_diff_per_token(base, personalization(text2, clip))[0]
            assert (diff > 1e-6).all(), (j, diff)


def test_batch_samples_are_independent(tiny_adapters):
    preservation, personalization = tiny_adapters
    clip, dino, text = tiny_inputs(3, seed=15)
    with torch.no_grad():
        p = preservation(clip, dino)
        s = personalization(text, clip)
        for b in range(3):
            torch.testing.assert_close(p[b:b + 1], preservation(clip[b:b + 1], dino[b:b + 1]),
                                       rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(s[b:b + 1], personalization(text[b:b + 1], clip[b:b + 1]),
                                       rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Parameter count.

def _linear(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def _layer_norm(width):
    return 2 * width


def _resampler_params(c, memory_dim):
    w = c.width
    attention = 2 * _layer_norm(w) + _linear(w, w, False) + _linear(w, 2 * w, False) + _linear(w, w, False)
    ff = _layer_norm(w) + _linear(w, w * c.ff_mult, False) + _linear(w * c.ff_mult, w, False)
    return (_linear(memory_dim, w) + c.depth * (attention + ff)
            + _linear(w, c.context_dim) + _layer_norm(c.context_dim))


def _clip_tokens_params(c):
    return _linear(c.clip.dim, c.num_clip_tokens * c.width) + _layer_norm(c.width)


def expected_flexip_params(c):
    preservation = (c.num_latent_queries * c.width + _clip_tokens_params(c)
                    + 2 * _resampler_params(c, c.dino.dim))
    personalization = _clip_tokens_params(c) + _linear(c.text_dim, c.width) + _resampler_params(c, c.width)
    projections = sum(4 * _linear(c.context_dim, inner, False) for _, inner in c.layers)
    gate = 2  # alpha, beta logits
    return preservation + personalization + projections + gate


@pytest.mark.parametrize("config", [TINY, SD15], ids=lambda c: c.name)
def test_flexip_parameter_count(config):
    with torch.device("meta"):  # counts without allocating SD1.5-sized weights
        model = FlexIP(config)
    count = sum(p.numel() for p in model.parameters())
    print(f"FlexIP({config.name}) parameters: {count:,}")
    assert count == expected_flexip_params(config)
    # Every parameter is trainable (the frozen parts live in the host model, not here).
    assert all(p.requires_grad for p in model.parameters())


def test_sd15_projection_parameters():
    """16 layers: five of inner width 320, five of 640, six of 1280; four context->inner maps each."""
    inner_sum = sum(inner for _, inner in SD15.layers)
    assert inner_sum == 5 * 320 + 5 * 640 + 6 * 1280
    with torch.device("meta"):
        model = FlexIP(SD15)
    assert sum(p.numel() for p in model.projections.parameters()) == 4 * 768 * inner_sum
