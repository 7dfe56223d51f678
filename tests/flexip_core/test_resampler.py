"""The perceiver resampler against a slow, hand-written float64 reference, plus structural checks.

The reference is written from the design document, not from the module's code: every block is
    x = x + Attn(LN_q(x), keys/values from concat(LN_m(memory), LN_q(x)))
    x = x + FF(x),  FF = Linear(GELU(Linear(LN(x))))
with per-head softmax(q k^T / sqrt(d)) v computed by explicit loops, and the module's own weights.
"""
import math

import pytest
import torch

from flexip_core.resampler import PerceiverAttention, Resampler

WIDTH, HEADS, FF_MULT, MEMORY_DIM, OUT_DIM = 32, 4, 2, 20, 24


def randomise_(module, seed):
    """Every parameter random (LayerNorm weights included, far from 1; biases far from 0), in float64."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.ndim == 2:    # Linear weight: keep activations O(1) through the depth
                p.copy_(noise * 1.5 / math.sqrt(p.shape[1]))
            elif "norm" in name or isinstance(_owner(module, name), torch.nn.LayerNorm):
                p.copy_(noise * 0.5 + (1.0 if name.endswith("weight") else 0.0))
            else:              # Linear bias
                p.copy_(noise * 0.5)
    return module


def _owner(module, param_name):
    return module.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else module


def make_resampler(seed=0, depth=2, heads=HEADS, width=WIDTH):
    torch.manual_seed(seed)
    return randomise_(Resampler(width, depth, heads, FF_MULT, MEMORY_DIM, OUT_DIM), seed + 1000)


# ----------------------------------------------------------------------------------------------
# The slow reference (float64, explicit loops, explicit softmax).

def ref_layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)          # biased variance, as LayerNorm
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_linear(x, linear):
    y = x @ linear.weight.T
    return y if linear.bias is None else y + linear.bias


def ref_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_softmax_rows(scores):
    out = torch.empty_like(scores)
    for i in range(scores.shape[0]):
        e = torch.exp(scores[i] - scores[i].max())
        out[i] = e / e.sum()
    return out


def ref_perceiver_attention(x, memory, attn, queries_in_keys=True):
    """x [N, W], memory [M, W] (one sample) -> [N, W]."""
    width = x.shape[-1]
    heads = attn.heads
    d = width // heads
    xq = ref_layer_norm(x, attn.norm_queries)
    mem = ref_layer_norm(memory, attn.norm_memory)
    kv_in = torch.cat((mem, xq), dim=0) if queries_in_keys else mem
    w_kv = attn.to_kv.weight                                   # [2W, W]: first W rows keys, next W values
    q = xq @ attn.to_q.weight.T
    k = kv_in @ w_kv[:width].T
    v = kv_in @ w_kv[width:].T
    head_outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        scores = (q[:, sl] @ k[:, sl].T) / math.sqrt(d)
        head_outs.append(ref_softmax_rows(scores) @ v[:, sl])
    return torch.cat(head_outs, dim=-1) @ attn.to_out.weight.T


def ref_feed_forward(x, ff):
    ln, lin1, act, lin2 = ff
    assert isinstance(ln, torch.nn.LayerNorm) and isinstance(act, torch.nn.GELU)
    return ref_linear(ref_gelu(ref_linear(ref_layer_norm(x, ln), lin1)), lin2)


def ref_resampler(module, queries, memory, queries_in_keys=True):
    """queries [B, N, W], memory [B, M, memory_dim] -> [B, N, out_dim], one sample at a time."""
    outs = []
    for b in range(queries.shape[0]):
        mem = ref_linear(memory[b], module.memory_in)
        x = queries[b]
        for attn, ff in module.blocks:
            x = x + ref_perceiver_attention(x, mem, attn, queries_in_keys)
            x = x + ref_feed_forward(x, ff)
        outs.append(ref_layer_norm(ref_linear(x, module.proj_out), module.norm_out))
    return torch.stack(outs)


def inputs(batch, n_queries, n_memory, seed, width=WIDTH):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n_queries, width, generator=gen, dtype=torch.float64),
            torch.randn(batch, n_memory, MEMORY_DIM, generator=gen, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,heads,batch,n_queries,n_memory", [
    (2, 4, 2, 5, 7),
    (1, 1, 1, 3, 9),
    (3, 8, 3, 4, 1),
    (2, 2, 2, 77, 16),
])
def test_resampler_matches_slow_reference(depth, heads, batch, n_queries, n_memory):
    module = make_resampler(seed=depth * 10 + heads, depth=depth, heads=heads)
    queries, memory = inputs(batch, n_queries, n_memory, seed=heads)
    with torch.no_grad():
        got = module(queries, memory)
        want = ref_resampler(module, queries, memory)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_is_sensitive_to_keys_including_queries():
    """The comparison above would fail for a resampler that attends to the memory alone."""
    module = make_resampler(seed=3)
    queries, memory = inputs(2, 5, 7, seed=4)
    with torch.no_grad():
        with_queries = ref_resampler(module, queries, memory, queries_in_keys=True)
        memory_only = ref_resampler(module, queries, memory, queries_in_keys=False)
    assert (with_queries - memory_only).abs().max() > 1e-3


def test_randomised_parameters_are_not_trivial():
    module = make_resampler(seed=5)
    for name, p in module.named_parameters():
        if name.endswith("weight") and p.ndim == 1:      # LayerNorm weights
            assert (p - 1).abs().max() > 0.1, name
        if name.endswith("bias"):
            assert p.abs().max() > 0.1, name


def test_perceiver_attention_alone_matches_reference():
    torch.manual_seed(0)
    attn = randomise_(PerceiverAttention(WIDTH, HEADS), seed=7)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, WIDTH, generator=gen, dtype=torch.float64)
    mem = torch.randn(2, 11, WIDTH, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x, mem)
    want = torch.stack([ref_perceiver_attention(x[b], mem[b], attn) for b in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_queries", [1, 4, 16, 77, 154])
@pytest.mark.parametrize("n_memory", [1, 257])
def test_output_shape(n_queries, n_memory):
    module = make_resampler(seed=1)
    queries, memory = inputs(3, n_queries, n_memory, seed=n_queries)
    with torch.no_grad():
        out = module(queries, memory)
    assert out.shape == (3, n_queries, OUT_DIM)
    assert torch.isfinite(out).all()


def test_changing_memory_changes_every_output_token():
    module = make_resampler(seed=2)
    queries, memory = inputs(2, 6, 8, seed=2)
    memory2 = memory.clone()
    memory2[:, 3] += torch.randn_like(memory2[:, 3], dtype=torch.float64)
    with torch.no_grad():
        diff = (module(queries, memory) - module(queries, memory2)).abs().amax(dim=-1)
    assert (diff > 1e-6).all(), diff


def test_permuting_memory_tokens_leaves_output_unchanged():
    """Attention is permutation-invariant over its keys/values (no positional encoding on memory)."""
    module = make_resampler(seed=6)
    queries, memory = inputs(2, 5, 9, seed=6)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(perm, torch.arange(9))
    with torch.no_grad():
        out = module(queries, memory)
        out_perm = module(queries, memory[:, perm])
    torch.testing.assert_close(out_perm, out, rtol=1e-12, atol=1e-12)


def test_permuting_queries_permutes_output():
    """Queries are mutually visible but unordered: the resampler is permutation-equivariant in them."""
    module = make_resampler(seed=7)
    queries, memory = inputs(2, 6, 4, seed=7)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        out = module(queries, memory)
        out_perm = module(queries[:, perm], memory)
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-12, atol=1e-12)


def test_queries_interact():
    """Because keys include the queries, changing one query changes the other queries' outputs."""
    module = make_resampler(seed=8)
    queries, memory = inputs(1, 5, 4, seed=8)
    queries2 = queries.clone()
    # A random change: adding a constant to every feature would vanish under the LayerNorms.
    queries2[:, 0] += torch.randn(WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        diff = (module(queries, memory) - module(queries2, memory)).abs().amax(dim=-1)
    assert (diff[:, 1:] > 1e-6).all(), diff


def test_samples_in_a_batch_are_independent():
    module = make_resampler(seed=9)
    queries, memory = inputs(3, 5, 6, seed=9)
    with torch.no_grad():
        batched = module(queries, memory)
        single = torch.cat([module(queries[b:b + 1], memory[b:b + 1]) for b in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)
