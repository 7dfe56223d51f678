"""The IP-Adapter-style baseline: one image adapter, decoupled cross-attention, a strength scale.

IP-Adapter(-plus) resamples the image encoder's tokens with a perceiver into a few image tokens,
adds one key/value projection pair per cross-attention layer, and adds Attn(q, K_img, V_img),
scaled by a strength w, to the text attention. FlexIP's preservation branch is that adapter (a
perceiver of learnable queries over the patch tokens, plus the global embedding's tokens, with its
own per-layer K/V), so the baseline is FlexIP's module with only that branch in use:

- training: the same Trainer, data, budget and CFG dropout as FlexIP, with the gate fixed at
  gamma = 0.999 for every sample (the Trainer's gate needs alpha and beta strictly inside (0, 1);
  the personalization branch's share of 0.001 is negligible, so it stays untrained);
- inference: gamma = 1 exactly (the personalization branch is then not computed at all) and the
  strength w is the control, swept 0 .. 1 as IP-Adapter users slide its weight.
The injection is the same GatedAttention patch, so both methods differ only in what they train
and which knob they turn.
"""
from .evaluate import Method

BASELINE_GATE = {"mode": "fixed", "alpha": 0.999, "beta": 0.001}
NAME = "IP-Adapter-style"


def baseline_method(flexip, values, references="scene"):
    return Method(NAME, flexip, "strength", tuple(values), lambda strength: (1.0, strength), references)
