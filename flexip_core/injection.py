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


def _branch_attention(q, branch, chunk_kinds, heads, attention):
    """Attend each chunk of q (one per entry of chunk_kinds) to that kind's K, V.

    Chunks can differ in token count (a long prompt against a short negative), so each chunk
    has its own call; K and V [1 or b, N, inner] broadcast over the chunk's batch.
    """
    if q.shape[0] % len(chunk_kinds):
        raise ValueError(f"a batch of {q.shape[0]} does not split into {len(chunk_kinds)} equal chunks")
    outs = []
    for q_chunk, kind in zip(q.chunk(len(chunk_kinds)), chunk_kinds):
        k, v = (t.to(q).expand(q_chunk.shape[0], -1, -1) for t in branch[kind])
        outs.append(attention(q_chunk, k, v, heads))
    return torch.cat(outs)


def gated_attention(q, base, branch_p, branch_s, gamma, strength, heads, chunk_kinds,
                    attention=attention_heads):
    """q, base: [B, Nq, inner], B made of len(chunk_kinds) equal chunks in ComfyUI's
    cond_or_uncond order. branch_p, branch_s: {COND: (K, V), UNCOND: (K, V)}.
    gamma: a number (inference), or a tensor [B] of per-sample gammas (training's gate).
    A branch whose weight is the number 0 is not computed; strength 0 returns `base` itself.
    """
    if isinstance(strength, (int, float)) and strength == 0:
        return base
    if torch.is_tensor(gamma):
        gamma = gamma.to(q).view(-1, 1, 1)
    out = base
    for weight, branch in ((gamma, branch_p), (1.0 - gamma, branch_s)):
        if torch.is_tensor(weight) or weight != 0:
            out = out + (strength * weight) * _branch_attention(q, branch, chunk_kinds, heads, attention)
    return out
