"""Where FlexIP's patch time goes (benchmarks/gated_apply.py): the attn2 patch calls of one sampler step,
captured, then replayed layer by layer against the layer's own attention and the other versions of the
patch (patch_variants.py). Replaying a call with its first 16 query tokens only leaves the per-call
overhead (Python, dispatch, kernel launches), what a launch-bound GPU step pays."""
import copy
import functools

from measuring import median
from patch_variants import patch_variant  # this script's folder is on sys.path


def capture_patch_calls(host, step, on):
    """The patch calls of one sampler step of condition `on` (not part of the timings): (patch, q, k, v, extra)."""
    cls = host.apply_mod.GatedAttention
    orig_call = cls.__call__
    captured = []

    def capturing_call(self, q, k, v, extra):
        keep = {n: extra[n] for n in ("n_heads", "cond_or_uncond", "sigmas", "attn_precision") if n in extra}
        captured.append((self, q.clone(), k.clone(), v.clone(), keep))
        return orig_call(self, q, k, v, extra)

    cls.__call__ = capturing_call
    try:
        step(on)
    finally:
        cls.__call__ = orig_call
    return captured


def replay_rows(host, captured, variants, on, unet_off):
    """Where the patch time goes: the captured calls replayed layer by layer, interleaved: the layer's own
    attention (what the unpatched model runs) against the patch and each variant. Each call is also replayed
    with its first 16 query tokens only: then the arithmetic is negligible and the time is the per-call
    overhead (Python, dispatch, launches), what a launch-bound GPU step pays."""
    torch, clock, args = host.torch, host.clock, host.args
    variant_patches = {}  # (variant, id(patch)) -> a copy with its own cache (the variant's own K/V layout)
    for variant in variants:
        for patch, *_ in captured:
            variant_patches[variant, id(patch)] = copy.copy(patch)
            variant_patches[variant, id(patch)].terms = {}
    rows = [("patch", f"patch calls in one {on} forward",
             f"{len(captured)} (distinct layers {len({c[0].key for c in captured})}, "
             f"chunks {sorted({tuple(c[4]['cond_or_uncond']) for c in captured})})")]
    optimized_attention = host.apply_mod.optimized_attention
    for tokens in (None, 16):
        per = {name: [] for name in ["base", "patch"] + variants}
        peak = {name: 0 for name in per}
        for rep in range(args.replay_reps + 1):
            for i, (patch, q, k, v, ex) in enumerate(captured):
                q = q if tokens is None else q[:, :tokens]
                heads, prec = ex["n_heads"], ex.get("attn_precision")
                runs = [("base", None, lambda: optimized_attention(q, k, v, heads, attn_precision=prec)),
                        ("patch", None, lambda: patch(q, k, v, ex))]
                runs += [(variant, variant, functools.partial(variant_patches[variant, id(patch)], q, k, v, ex))
                         for variant in variants]
                for name, variant, fn in (runs if rep % 2 == 0 else runs[::-1]):
                    if host.cuda:
                        torch.cuda.reset_peak_memory_stats()
                        before = torch.cuda.memory_allocated()
                    with patch_variant(host.patch_mod, variant):
                        _, dt = clock(fn)
                    if host.cuda:
                        peak[name] = max(peak[name], torch.cuda.max_memory_allocated() - before)
                    if rep:  # rep 0 warms up
                        if len(per[name]) <= i:
                            per[name].append([])
                        per[name][i].append(dt)
        layer_sum = {name: sum(median(ts) for ts in v) for name, v in per.items()}
        extra_now = layer_sum["patch"] - layer_sum["base"]
        what = "" if tokens is None else f" at {tokens} query tokens (per-call overhead)"
        rows.append(("patch", f"replay of the 16 layers{what}, median of {args.replay_reps} each, summed",
                     ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in layer_sum.items())))
        rows.append(("patch", f"FlexIP's added time per UNet forward{what} (patch - base)",
                     f"{extra_now * 1e3:.2f} ms" + ("" if tokens else f" = {extra_now / unet_off * 100:.2f}% of an off forward")))
        for variant in variants:
            extra = layer_sum[variant] - layer_sum["base"]
            rows.append(("patch", f"  {variant}{what} ({variant} - base)",
                         f"{extra * 1e3:.2f} ms" + ("" if tokens else f" = {extra / unet_off * 100:.2f}%")))
        if host.cuda and tokens is None:
            rows.append(("patch", "largest CUDA memory a single call added (peak - before)",
                         ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in peak.items())))
    return rows
