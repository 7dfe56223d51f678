"""The gated injection into one cross-attention layer:

    out = base + w * (gamma * Attn(q, K_P, V_P) + (1 - gamma) * Attn(q, K_S, V_S))

checked against a float64 per-head reference, per CFG chunk (ComfyUI's cond_or_uncond order)."""
import math

import pytest
import torch

from flexip_core.injection import COND, UNCOND, attention_heads, gated_attention, inject, weighted_branches

F64 = torch.float64
HEADS, DIM_HEAD = 4, 8
INNER = HEADS * DIM_HEAD
NQ = 10


def randn(*shape, seed, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ref_attention(q, k, v, heads):
    """[B, N, h*d] tensors; explicit loops over batch and heads, explicit row softmax, float64."""
    q, k, v = q.double(), k.double(), v.double()
    d = q.shape[-1] // heads
    out = torch.empty(q.shape[0], q.shape[1], v.shape[-1], dtype=F64)
    for b in range(q.shape[0]):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            scores = q[b, :, sl] @ k[b, :, sl].T / math.sqrt(d)
            weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
            weights = weights / weights.sum(dim=-1, keepdim=True)
            out[b, :, sl] = weights @ v[b, :, sl]
    return out


def kv(batch, n_tokens, seed):
    return randn(batch, n_tokens, INNER, seed=seed), randn(batch, n_tokens, INNER, seed=seed + 1)


@pytest.fixture
def setup():
    """One chunk per kind, chunk batch 2; P 20 tokens, S 154 tokens for cond and 77 for uncond."""
    chunk = 2
    kinds = [COND, UNCOND]
    q = randn(chunk * len(kinds), NQ, INNER, seed=1)
    base = randn(chunk * len(kinds), NQ, INNER, seed=2)
    branch_p = {COND: kv(1, 20, 10), UNCOND: kv(1, 20, 20)}
    branch_s = {COND: kv(1, 154, 30), UNCOND: kv(1, 77, 40)}
    return q, base, branch_p, branch_s, kinds, chunk


def ref_branch(q, branch, kinds, chunk):
    outs = []
    for i, kind in enumerate(kinds):
        qc = q[i * chunk:(i + 1) * chunk]
        k, v = (t.expand(chunk, -1, -1) for t in branch[kind])
        outs.append(ref_attention(qc, k, v, HEADS))
    return torch.cat(outs)


def ref_gated(q, base, branch_p, branch_s, gamma, strength, kinds, chunk):
    return base + strength * (gamma * ref_branch(q, branch_p, kinds, chunk)
                              + (1 - gamma) * ref_branch(q, branch_s, kinds, chunk))


class RecordingAttention:
    """An `attention` callable that records the K it was given for each call."""

    def __init__(self):
        self.keys = []

    def __call__(self, q, k, v, heads):
        self.keys.append(k)
        return attention_heads(q, k, v, heads)

    def called_with(self, k):
        return any(kk.shape[1:] == k.shape[1:] and torch.equal(kk[0], k[0]) for kk in self.keys)


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 4, 8])
def test_attention_heads_matches_per_head_reference(heads):
    q, k, v = randn(3, 7, 32, seed=1), randn(3, 13, 32, seed=2), randn(3, 13, 32, seed=3)
    torch.testing.assert_close(attention_heads(q, k, v, heads), ref_attention(q, k, v, heads),
                               rtol=1e-12, atol=1e-12)


def test_attention_heads_differs_from_single_head():
    """The head split matters (so the reference above checks something)."""
    q, k, v = randn(1, 7, 32, seed=1), randn(1, 13, 32, seed=2), randn(1, 13, 32, seed=3)
    assert (attention_heads(q, k, v, 4) - ref_attention(q, k, v, 1)).abs().max() > 1e-3


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_gamma_one_is_preservation_only(setup, strength):
    q, base, bp, bs, kinds, chunk = setup
    rec = RecordingAttention()
    out = gated_attention(q, base, bp, bs, 1.0, strength, HEADS, kinds, attention=rec)
    torch.testing.assert_close(out, base + strength * ref_branch(q, bp, kinds, chunk), rtol=1e-12, atol=1e-12)
    assert len(rec.keys) == 1                                # P only: one call, chunks stacked
    assert rec.keys[0].shape == (q.shape[0], 20, INNER)
    assert not any(rec.called_with(bs[kind][0]) for kind in (COND, UNCOND))


@pytest.mark.parametrize("strength", [1.0, 1.7])
def test_gamma_zero_is_personalization_only(setup, strength):
    q, base, bp, bs, kinds, chunk = setup
    rec = RecordingAttention()
    out = gated_attention(q, base, bp, bs, 0.0, strength, HEADS, kinds, attention=rec)
    torch.testing.assert_close(out, base + strength * ref_branch(q, bs, kinds, chunk), rtol=1e-12, atol=1e-12)
    assert [k.shape[1] for k in rec.keys] == [154, 77]       # S only, cond chunk then uncond chunk
    assert not any(rec.called_with(bp[kind][0]) for kind in (COND, UNCOND))


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("strength", [1.0, 0.35])
def test_general_gamma_matches_reference(setup, gamma, strength):
    q, base, bp, bs, kinds, chunk = setup
    out = gated_attention(q, base, bp, bs, gamma, strength, HEADS, kinds)
    want = ref_gated(q, base, bp, bs, gamma, strength, kinds, chunk)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    # Both branches contribute: the result is neither end point.
    for g in (0.0, 1.0):
        assert (out - ref_gated(q, base, bp, bs, g, strength, kinds, chunk)).abs().max() > 1e-3


def test_output_is_linear_in_gamma(setup):
    q, base, bp, bs, kinds, _ = setup
    outs = [gated_attention(q, base, bp, bs, g, 1.0, HEADS, kinds) for g in (0.0, 0.3, 1.0)]
    torch.testing.assert_close(outs[1], 0.7 * outs[0] + 0.3 * outs[2], rtol=1e-12, atol=1e-12)


def test_strength_zero_returns_base_itself(setup):
    q, base, bp, bs, kinds, _ = setup
    calls = []
    out = gated_attention(q, base, bp, bs, 0.5, 0.0, HEADS, kinds,
                          attention=lambda *a: calls.append(a) or attention_heads(*a))
    assert out is base
    assert torch.equal(out, base)
    assert calls == []


def test_base_is_not_modified_in_place(setup):
    q, base, bp, bs, kinds, _ = setup
    kept = base.clone()
    out = gated_attention(q, base, bp, bs, 0.5, 1.0, HEADS, kinds)
    assert torch.equal(base, kept) and out is not base


@pytest.mark.parametrize("kinds", [[COND, UNCOND], [UNCOND, COND], [COND], [UNCOND], [COND, UNCOND, COND]])
@pytest.mark.parametrize("chunk", [1, 2])
def test_each_chunk_gets_its_own_kind(kinds, chunk):
    q = randn(chunk * len(kinds), NQ, INNER, seed=5)
    base = randn(chunk * len(kinds), NQ, INNER, seed=6)
    bp = {COND: kv(1, 20, 50), UNCOND: kv(1, 20, 60)}
    bs = {COND: kv(1, 154, 70), UNCOND: kv(1, 77, 80)}
    rec = RecordingAttention()
    out = gated_attention(q, base, bp, bs, 0.4, 0.8, HEADS, kinds, attention=rec)
    torch.testing.assert_close(out, ref_gated(q, base, bp, bs, 0.4, 0.8, kinds, chunk), rtol=1e-12, atol=1e-12)
    # Calls: P once, its K stacked over the chunks in order (equal token counts); then S once per
    # chunk in order where the chunks' token counts differ, else once, stacked.
    stacked_p = torch.cat([bp[kind][0].expand(chunk, -1, -1) for kind in kinds])
    s_keys = [bs[kind][0].expand(chunk, -1, -1) for kind in kinds]
    expected = [stacked_p] + (s_keys if len({bs[kind][0].shape[1] for kind in kinds}) > 1 else [torch.cat(s_keys)])
    assert len(rec.keys) == len(expected)
    for got, want in zip(rec.keys, expected):
        assert torch.equal(got, want)


def test_swapping_chunk_order_swaps_outputs(setup):
    """The same q rows labelled [uncond, cond] instead of [cond, uncond] get the other kind's P and S."""
    q, base, bp, bs, _, chunk = setup
    a = gated_attention(q, base, bp, bs, 0.5, 1.0, HEADS, [COND, UNCOND])
    b = gated_attention(q, base, bp, bs, 0.5, 1.0, HEADS, [UNCOND, COND])
    assert (a - b).abs().amax(dim=(1, 2)).min() > 1e-3  # every sample differs
    q_swapped = torch.cat((q[chunk:], q[:chunk]))
    base_swapped = torch.cat((base[chunk:], base[:chunk]))
    c = gated_attention(q_swapped, base_swapped, bp, bs, 0.5, 1.0, HEADS, [UNCOND, COND])
    torch.testing.assert_close(torch.cat((c[chunk:], c[:chunk])), a, rtol=1e-12, atol=1e-12)


def test_per_sample_k_v_within_a_chunk():
    """K, V with the chunk's own batch size (one reference per sample) are used row by row."""
    chunk, kinds = 2, [UNCOND, COND]
    q = randn(4, NQ, INNER, seed=7)
    base = randn(4, NQ, INNER, seed=8)
    bp = {COND: kv(2, 20, 90), UNCOND: kv(2, 20, 100)}
    bs = {COND: kv(2, 154, 110), UNCOND: kv(2, 77, 120)}
    out = gated_attention(q, base, bp, bs, 0.6, 1.0, HEADS, kinds)
    want = base.clone()
    for i, kind in enumerate(kinds):
        for j in range(chunk):
            row = i * chunk + j
            qr = q[row:row + 1]
            p = ref_attention(qr, bp[kind][0][j:j + 1], bp[kind][1][j:j + 1], HEADS)
            s = ref_attention(qr, bs[kind][0][j:j + 1], bs[kind][1][j:j + 1], HEADS)
            want[row] = base[row] + (0.6 * p + 0.4 * s)[0]
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_k_v_are_cast_to_the_query_dtype():
    kinds = [COND, UNCOND]
    q = randn(2, NQ, INNER, seed=9, dtype=torch.bfloat16)
    base = randn(2, NQ, INNER, seed=10, dtype=torch.bfloat16)
    bp = {kind: tuple(t.float() for t in kv(1, 20, 130 + kind)) for kind in kinds}
    bs = {kind: tuple(t.float() for t in kv(1, 77, 140 + kind)) for kind in kinds}
    out = gated_attention(q, base, bp, bs, 0.5, 1.0, HEADS, kinds)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    want = ref_gated(q.double(), base.double(), bp, bs, 0.5, 1.0, kinds, 1)
    torch.testing.assert_close(out.double(), want, rtol=0.05, atol=0.05)


def test_per_sample_gammas_with_different_token_counts_per_chunk():
    """A tensor gamma (training's gate, a gamma sweep) weights each row's branches by its own gamma,
    also when S has 154 tokens in the cond chunk and 77 in the uncond chunk."""
    chunk, kinds = 3, [COND, UNCOND]
    q = randn(6, NQ, INNER, seed=11)
    base = randn(6, NQ, INNER, seed=12)
    bp = {COND: kv(1, 20, 150), UNCOND: kv(1, 20, 160)}
    bs = {COND: kv(1, 154, 170), UNCOND: kv(1, 77, 180)}
    gammas = torch.tensor([0.1, 0.5, 0.95], dtype=F64)
    out = gated_attention(q, base, bp, bs, gammas.repeat(2), 0.7, HEADS, kinds)
    want = torch.cat([ref_gated(q[row:row + 1], base[row:row + 1], bp, bs, gammas[row % chunk].item(), 0.7,
                                [kinds[row // chunk]], 1) for row in range(6)])
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch"])
def test_comfyui_attention_backends_give_the_formula(comfy, setup, backend):
    """Each ComfyUI attention the host may pick (CPU: sub_quad or pytorch; CUDA: pytorch;
    --use-split-cross-attention: split; basic as the fallback) gives the formula in float64."""
    import comfy.ldm.modules.attention as host_attention
    attention = getattr(host_attention, backend)
    q, base, bp, bs, kinds, chunk = setup
    terms = weighted_branches(bp, bs, 0.3, 0.9, kinds, q.shape[0], q)
    out = inject(q, base, terms, HEADS, attention)
    torch.testing.assert_close(out, ref_gated(q, base, bp, bs, 0.3, 0.9, kinds, chunk), rtol=1e-12, atol=1e-12)
