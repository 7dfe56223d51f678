"""FlexIP as a UNet attn2 replace patch: the one injection path of the nodes, training and
evaluation.

ComfyUI calls a patch registered in transformer_options["patches_replace"]["attn2"] with
(q, k, v, extra_options) in place of a cross-attention's own attention, before its to_out.
The patch returns that attention (or another pack's patch it wraps) plus FlexIP's gated
branches. It only reads extra_options and is handed the host's attention function, so this
module needs no ComfyUI import.
"""
import copy

import torch

from .injection import inject, weighted_branches
from .projections import layer_name

# Cross-attention context widths of the base models a user may connect by mistake.
CONTEXT_WIDTHS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def cross_attentions(diffusion_model):
    """{(block, index, transformer_index): attn2} of a UNet, keyed as ComfyUI's attn2 patches are."""
    blocks = [("input", i, b) for i, b in enumerate(getattr(diffusion_model, "input_blocks", []))]
    if hasattr(diffusion_model, "middle_block"):
        blocks.append(("middle", 0, diffusion_model.middle_block))
    blocks += [("output", i, b) for i, b in enumerate(getattr(diffusion_model, "output_blocks", []))]
    found = {}
    for name, index, block in blocks:
        for module in block.modules():
            for t, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                if getattr(transformer, "attn2", None) is not None:
                    found[(name, index, t)] = transformer.attn2
    return found


def unet_mismatch(diffusion_model, config):
    """None if the UNet has exactly the cross-attention layers, widths and context of `config`,
    else what differs, worded for the user."""
    layers = cross_attentions(diffusion_model)
    widths = {attn.to_k.in_features for attn in layers.values()}
    expected = dict(config.layers)
    if widths == {config.context_dim} and set(layers) == set(expected) and all(
            layers[key].to_k.out_features == inner for key, inner in expected.items()):
        return None
    seen = ", ".join(CONTEXT_WIDTHS.get(w, f"{w}-wide") for w in sorted(widths)) or "no cross-attention"
    return (f"{len(layers)} cross-attention layers, context {seen}) is not the UNet FlexIP ({config.name}) "
            f"was trained for ({len(expected)} layers, context {config.context_dim}).")


class GatedAttention:
    """One layer's attn2 replacement: the layer's own attention (or the patch it wraps) plus FlexIP.

    kv_p, kv_s: {COND/UNCOND: (K, V)} of the two branches in this layer's inner width, K and V
    [1 or rows, N, inner]. gamma: a number, or a tensor [rows] of per-sample gammas, one per row
    of each CFG chunk (every chunk gets the same rows' gammas: a gamma sweep over a latent batch;
    training's gate, whose batch is one COND chunk).
    attention(q, k, v, heads, attn_precision=None, transformer_options=None, **options): the host's
    attention (ComfyUI's optimized_attention), so the branches run exactly the kernel the layer itself
    runs. It gets the layer's extra_options as transformer_options, as the layer's own attention gets
    them: an attention override set there (ModelPatcher.set_model_optimized_attention, read by
    ComfyUI's wrap_attn) runs the text attention and both branches. Other options of it (mask,
    skip_reshape, ...) are passed through (benchmarks/patch_variants.py).
    sigma_window: (start, end) sigmas outside which FlexIP is off, or None for every step.
    on_call: optional callback(key, chunks, gamma), e.g. a debug log.
    cache_terms: keep the weighted K/V per batch layout across calls (sampling). Training passes
    False: its K/V change every step, and gradient checkpointing must recompute them.
    schedule: optional schedule(sigma, block) -> gamma (flexip_core.schedule.SigmaSchedule), read
    at each call in place of gamma.
    batch_error: batch_error(gammas, rows) -> the exception to raise when a tensor gamma has not
    one value per row of a chunk (the nodes name the input that gave the gammas).

    Clone safety: nothing changes a GatedAttention after it is made. Its one mutable field, `terms`,
    is a memo of weighted_branches, a function of the fixed fields and of the memo's key alone. So
    clones of a model may share the object or copy it, whichever way the host copies model_options.
    """

    def __init__(self, key, kv_p, kv_s, gamma, strength, attention, sigma_window=None, wrapped=None,
                 on_call=None, cache_terms=True, schedule=None, batch_error=None):
        self.key, self.name = key, layer_name(key)
        self.kv_p, self.kv_s = kv_p, kv_s
        self.gamma, self.strength = gamma, strength
        self.attention = attention
        self.sigma_window = sigma_window
        self.wrapped = wrapped
        self.on_call = on_call
        self.cache_terms = cache_terms
        self.schedule = schedule
        self.batch_error = batch_error or gamma_count_error
        # Weighted, stacked K/V per batch layout: built at the first step, reused at every other.
        # With a schedule, per (layout, gamma), and only the latest gamma of each layout is kept.
        self.terms = {}

    def __deepcopy__(self, memo):
        # Where ModelPatcher.clone() deep-copies model_options (ComfyUI 0.3.75; 0.33.0 shares the
        # patch object instead): the K/V and the memo are shared, not copied; the wrapped patch is
        # copied with the same memo, so it stays the object the clone's patch table holds (ComfyUI
        # calls .to(device) on that one).
        clone = copy.copy(self)
        clone.wrapped = copy.deepcopy(self.wrapped, memo)
        return clone

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]

        def attention(q_, k_, v_, heads_, **options):
            return self.attention(q_, k_, v_, heads_, attn_precision=extra_options.get("attn_precision"),
                                  transformer_options=extra_options, **options)

        base = self.wrapped(q, k, v, extra_options) if self.wrapped else attention(q, k, v, heads)
        if isinstance(self.strength, (int, float)) and self.strength == 0:
            return base
        if self.sigma_window is not None or self.schedule is not None:  # only then: .item() waits for the GPU
            sigma = extra_options["sigmas"].max().item()
            if self.sigma_window is not None and not self.sigma_window[1] <= sigma <= self.sigma_window[0]:
                return base
        chunks = tuple(extra_options["cond_or_uncond"])
        layout = (q.device, q.dtype, chunks, q.shape[0])
        gamma = self.gamma
        if self.schedule is not None:
            gamma = self.schedule(sigma, self.key[0])
            layout += (gamma,)
        if self.on_call is not None:
            self.on_call(self.key, chunks, gamma)
        terms = self.terms.get(layout)
        if terms is None:
            terms = weighted_branches(self.kv_p, self.kv_s, self.per_row(gamma, chunks, q.shape[0]), self.strength,
                                      chunks, q.shape[0], q)
            if self.cache_terms:
                if self.schedule is not None:  # a new step's gamma: the last one's K/V are not needed again
                    for old in [cached for cached in self.terms if cached[:4] == layout[:4]]:
                        del self.terms[old]
                self.terms[layout] = terms
        return inject(q, base, terms, heads, attention)

    def around(self, other):
        """A copy of this patch that runs `other` (the patch ComfyUI would call on this layer without
        FlexIP, found at call time) in place of the layer's own attention; through the innermost FlexIP
        patch when FlexIP was applied more than once. Copies share the K/V and their cache."""
        wrapping = copy.copy(self)
        wrapping.wrapped = self.wrapped.around(other) if isinstance(self.wrapped, GatedAttention) else other
        return wrapping

    def per_row(self, gamma, chunks, batch):
        """A tensor gamma [rows] repeated over the chunks, as weighted_branches takes it: [batch]."""
        if not torch.is_tensor(gamma):
            return gamma
        rows = batch // len(chunks)
        if gamma.shape[0] != rows:
            raise self.batch_error(gamma.shape[0], rows)
        return gamma if len(chunks) == 1 else gamma.repeat(len(chunks))


def stack_patches(attn2_table, flexip_patches):
    """ComfyUI's attn2 patch table for one UNet call, with every FlexIP patch running the other pack's
    patch on its layer, whichever order the graph applied them in.

    flexip_patches: {(block, index, transformer_index): the latest FlexIP patch on that layer}. For
    each layer ComfyUI calls the three-part key's patch if there is one, else the two-part key's
    (block, index). So another pack's two-part patch is shadowed by FlexIP's key whether it came
    first or last, and another pack's three-part patch applied after FlexIP replaces FlexIP's.
    """
    stacked = dict(attn2_table)
    for key, flexip in flexip_patches.items():
        current = attn2_table.get(key)
        if isinstance(current, GatedAttention):
            innermost = current
            while isinstance(innermost.wrapped, GatedAttention):
                innermost = innermost.wrapped
            shadowed = attn2_table.get(key[:2])
            if innermost.wrapped is None and shadowed is not None:
                stacked[key] = current.around(shadowed)
        elif current is not None:  # another pack's patch replaced FlexIP's
            stacked[key] = flexip.around(current)
    return stacked


def gamma_count_error(gammas, rows):
    return ValueError(f"{gammas} per-sample gammas for a batch of {rows} rows per chunk: one gamma per row is needed")
