"""Per-layer key/value projections of the two branches, one set per UNet cross-attention.

Each layer gets its own Wk_P, Wv_P (for P) and Wk_S, Wv_S (for S), mapping context_dim to the
layer's inner width. Initialising them from the layer's own to_k / to_v makes the untrained
branches read P and S the way that layer reads text.
"""
import torch
from torch import nn


def layer_name(key):
    """('input', 1, 0) -> 'input_1_0': a ModuleDict / weight-file key."""
    return "_".join(str(part) for part in key)


class BranchProjections(nn.Module):
    def __init__(self, context_dim, inner_dim):
        super().__init__()
        self.to_k_p = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v_p = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_k_s = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v_s = nn.Linear(context_dim, inner_dim, bias=False)

    def forward(self, p, s):
        """P [B, N_P, context], S [B, N_S, context] -> ((K_P, V_P), (K_S, V_S)) in the inner width."""
        return (self.to_k_p(p), self.to_v_p(p)), (self.to_k_s(s), self.to_v_s(s))


class LayerProjections(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.keys = tuple(key for key, _ in config.layers)
        self.layers = nn.ModuleDict({
            layer_name(key): BranchProjections(config.context_dim, inner) for key, inner in config.layers
        })

    def __getitem__(self, key):
        return self.layers[layer_name(key)]

    @torch.no_grad()
    def init_from_unet(self, to_k_to_v):
        """to_k_to_v: {layer key: (to_k weight, to_v weight)} of the base UNet's cross-attentions."""
        missing = set(self.keys) - set(to_k_to_v)
        if missing:
            raise ValueError(f"no to_k / to_v given for layers {sorted(missing)}")
        pairs = []
        for key in self.keys:  # check every shape before copying anything
            to_k, to_v = to_k_to_v[key]
            layer = self[key]
            for linear, weight in ((layer.to_k_p, to_k), (layer.to_k_s, to_k), (layer.to_v_p, to_v), (layer.to_v_s, to_v)):
                if linear.weight.shape != weight.shape:
                    raise ValueError(f"layer {key}: UNet weight has shape {tuple(weight.shape)}, "
                                     f"FlexIP expects {tuple(linear.weight.shape)}")
                pairs.append((linear, weight))
        for linear, weight in pairs:
            linear.weight.copy_(weight)
