"""Perceiver resampler (Jaegle et al.), as FlexIP uses it: queries X attend to concat(X, M).

Each block: x = x + Attn(LN(x), LN(concat(M, x))); x = x + FF(x). A final projection maps
the queries to the UNet's context width.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class PerceiverAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm_memory = nn.LayerNorm(width)
        self.norm_queries = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, queries, memory):
        queries = self.norm_queries(queries)
        memory = self.norm_memory(memory)
        q = self.to_q(queries)
        k, v = self.to_kv(torch.cat((memory, queries), dim=-2)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def feed_forward(width, mult):
    return nn.Sequential(
        nn.LayerNorm(width),
        nn.Linear(width, width * mult, bias=False),
        nn.GELU(),
        nn.Linear(width * mult, width, bias=False),
    )


class Resampler(nn.Module):
    """Resample `memory` ([B, M, memory_dim]) into as many tokens as `queries` ([B, N, width])."""

    def __init__(self, width, depth, heads, ff_mult, memory_dim, out_dim):
        super().__init__()
        self.memory_in = nn.Linear(memory_dim, width)
        self.blocks = nn.ModuleList(
            nn.ModuleList((PerceiverAttention(width, heads), feed_forward(width, ff_mult)))
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(width, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, queries, memory):
        memory = self.memory_in(memory)
        x = queries
        for attn, ff in self.blocks:
            x = x + attn(x, memory)
            x = x + ff(x)
        return self.norm_out(self.proj_out(x))
