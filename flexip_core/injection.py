"""The gated injection into one UNet cross-attention layer (dynamic weight gating at inference):

    out = base + w * (gamma * Attn(q, K_P, V_P) + (1 - gamma) * Attn(q, K_S, V_S))

`base` is the layer's own attention over the text, or whatever another pack's patch on that
layer returned; the sum stays before the layer's to_out, which is linear, so blending outputs
here equals blending after it.
"""
import torch
import torch.nn.functional as F
from einops import rearrange

COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond values


def attention_heads(q, k, v, heads):
    """Multi-head attention on [B, N, heads * dim_head] tensors, same layout as ComfyUI's optimized_attention."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


def weighted_branches(branch_p, branch_s, gamma, strength, chunk_kinds, batch, like):
    """The (K, V) pairs one batch layout attends to, each branch's weight (strength * gamma, or
    strength * (1 - gamma)) folded into its V: attention is linear in V, so that saves a multiply.

    A batch of `batch` rows is len(chunk_kinds) equal chunks in ComfyUI's cond_or_uncond order.
    Each branch gives one [batch, N, inner] K and V, stacked over the chunks, so it costs one
    attention call; where the kinds' token counts differ (a long prompt against a short negative)
    it gives one pair per chunk instead. A branch whose weight is the number 0 is left out.
    The result depends only on the layout, so a caller computes it once per sampling run.
    gamma: a number, or a tensor [batch] of per-sample gammas (training's gate).
    """
    if batch % len(chunk_kinds):
        raise ValueError(f"a batch of {batch} does not split into {len(chunk_kinds)} equal chunks")
    rows = batch // len(chunk_kinds)
    if torch.is_tensor(gamma):
        gamma = gamma.to(like).view(-1, 1, 1)
    terms = []
    for weight, branch in ((gamma, branch_p), (1.0 - gamma, branch_s)):
        if not torch.is_tensor(weight) and weight == 0:
            continue
        pairs = [tuple(t.to(like).expand(rows, -1, -1) for t in branch[kind]) for kind in chunk_kinds]
        if len({k.shape[1] for k, _ in pairs}) == 1:
            pairs = [(torch.cat([k for k, _ in pairs]), torch.cat([v for _, v in pairs]))]
        step = batch // len(pairs)
        terms.append([(k, v * (strength * (weight[i * step:(i + 1) * step] if torch.is_tensor(weight) else weight)))
                      for i, (k, v) in enumerate(pairs)])
    return terms


def inject(q, base, terms, heads, attention=attention_heads):
    """base + the attention of q to every weighted branch (terms from weighted_branches)."""
    out = base
    for pairs in terms:
        if len(pairs) == 1:
            out = out + attention(q, *pairs[0], heads)
        else:
            out = out + torch.cat([attention(q_chunk, k, v, heads) for q_chunk, (k, v) in zip(q.chunk(len(pairs)), pairs)])
    return out


def gated_attention(q, base, branch_p, branch_s, gamma, strength, heads, chunk_kinds,
                    attention=attention_heads):
    """q, base: [B, Nq, inner], B made of len(chunk_kinds) equal chunks in ComfyUI's
    cond_or_uncond order. branch_p, branch_s: {COND: (K, V), UNCOND: (K, V)}, K and V
    [1 or rows, N, inner]. gamma: a number (inference), or a tensor [B] of per-sample gammas.
    A branch whose weight is the number 0 is not computed; strength 0 returns `base` itself.
    """
    if isinstance(strength, (int, float)) and strength == 0:
        return base
    return inject(q, base, weighted_branches(branch_p, branch_s, gamma, strength, chunk_kinds, q.shape[0], q),
                  heads, attention)
