"""Other versions of FlexIP's attn2 patch, kept only to be timed against the pack's by
benchmarks/gated_apply.py (issue 10 item 7); see benchmarks/README.md for their measurements.

Each is swapped into flexip_core.patch (its weighted_branches and inject) for one condition.
"""
import contextlib


def layout_inject(q, base, terms, heads, attention):
    """layout: the pack's inject with the branches kept in the attention's own [B, heads, N,
    dim_head] layout (skip_reshape, skip_output_reshape) and their outputs added to base through
    transposed views: no copy of each output back to [B, N, inner] (a kernel launch per branch on
    a GPU). Bit-identical with PyTorch's attention; sub_quad rounds K's products in another order."""
    import torch

    def split_heads(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)
    q = split_heads(q)
    out = base.unflatten(-1, (heads, -1))
    for pairs in terms:
        outputs = [attention(q_chunk, split_heads(k), split_heads(v), heads, skip_reshape=True, skip_output_reshape=True)
                   for q_chunk, (k, v) in zip(q.chunk(len(pairs)), pairs)]
        out = out + (outputs[0] if len(outputs) == 1 else torch.cat(outputs)).transpose(1, 2)
    return out.flatten(-2)


def fused_weighted_branches(branch_p, branch_s, gamma, strength, chunk_kinds, batch, like):
    """fused: both branches over all CFG chunks stacked along the batch for ONE attention call, the
    key sets zero-padded to one length (a multiple of 16, the alignment PyTorch's masked CUDA
    kernel wants) and masked with -inf, so padding gets weight exactly 0.
    Returns (K, V, additive mask [count * batch, 1, N] or None, count of branches)."""
    import torch
    import torch.nn.functional as F
    rows = batch // len(chunk_kinds)
    if torch.is_tensor(gamma):
        gamma = gamma.to(like).view(-1, 1, 1)
    keys, values = [], []
    for weight, branch in ((gamma, branch_p), (1.0 - gamma, branch_s)):
        if not torch.is_tensor(weight) and weight == 0:
            continue
        weight = strength * weight
        for i, kind in enumerate(chunk_kinds):
            k, v = (t.to(like).expand(rows, -1, -1) for t in branch[kind])
            keys.append(k)
            values.append(v * (weight[i * rows:(i + 1) * rows] if torch.is_tensor(weight) else weight))
    count = len(keys) // len(chunk_kinds)
    lengths = [k.shape[1] for k in keys]
    if len(set(lengths)) == 1:
        return torch.cat(keys), torch.cat(values), None, count
    n = -(-max(lengths) // 16) * 16
    k, v = (torch.cat([F.pad(t, (0, 0, 0, n - t.shape[1])) for t in ts]) for ts in (keys, values))
    mask = torch.cat([F.pad(like.new_zeros(rows, 1, length), (0, n - length), value=float("-inf")) for length in lengths])
    return k, v, mask, count


def fused_inject(q, base, fused, heads, attention):
    k, v, mask, count = fused
    out = attention(q if count == 1 else q.repeat(count, 1, 1), k, v, heads, mask=mask)
    return base + (out if count == 1 else out.unflatten(0, (count, -1)).sum(0))


VARIANTS = {"layout": (None, layout_inject), "fused": (fused_weighted_branches, fused_inject)}


@contextlib.contextmanager
def patch_variant(patch_module, name):
    """GatedAttention runs variant `name` inside this block (None: the pack's own)."""
    saved = patch_module.weighted_branches, patch_module.inject
    if name is not None:
        build, inject = VARIANTS[name]
        patch_module.weighted_branches, patch_module.inject = build or saved[0], inject
    try:
        yield
    finally:
        patch_module.weighted_branches, patch_module.inject = saved
