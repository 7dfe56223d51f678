#!/usr/bin/env python
"""Benchmark: what FlexIP costs at sampling time, in one process, same seed.

1. Time of one UNet forward as the sampler calls it (cond + uncond in one batch), with and
   without GatedApply, and gamma=0.5 (both branches) against gamma=1 (P branch only).
2. Time of ReferenceEncoder.encode (CLIP ViT-H + DINOv2-L) and of the two adapters.
3. Peak memory (process RSS), the bytes of FlexIP's precomputed K/V in the patches, and of
   the FlexIP module.

The nodes are the pack's real classes, imported as a package the way ComfyUI imports a custom
node folder; the models are the full-shape random files of scripts/random_models.py (speed
and memory do not depend on the weights' values).

How a step is timed: each measurement is one call of comfy.sample.sample (what KSampler runs)
with 1 euler step, cfg 7.5, so ComfyUI itself batches cond + uncond, builds transformer_options
(cond_or_uncond, sigmas, patches_replace) and calls BaseModel.apply_model. A
model_function_wrapper set on the base model (GatedApply keeps it when it clones) times exactly
that apply_model call (synchronising first if on a GPU); the wall time of the whole sample()
call (setup + CFG + euler) is reported beside it. Conditions run interleaved, the order rotated
every round (ABC BCA CAB ...), after warm-up rounds that are not counted; medians are reported.

Other versions of the patch, kept in this script only, are timed at the first gamma as further
conditions (--variants): "layout" (each branch's output kept in the attention's [B, heads, N,
dim_head] layout and added through a transposed view, one copy per branch less) and "fused"
(both branches and all CFG chunks in one attention call, key sets zero-padded and masked). The ratio
of the pack's patch to each is printed, and how far their outputs differ.

Where the patch time goes: the 16 patch calls of one step are captured and replayed layer by
layer (interleaved, medians): the layer's own attention alone (what the unpatched model runs)
against the patch and each variant, once as captured and once with only the first 16 query
tokens, where the arithmetic is negligible and the time is the per-call overhead (Python,
dispatch, kernel launches) that a launch-bound GPU step pays.

Run:  .host/venv/bin/python benchmarks/gated_apply.py [--steps 7] [--latent 64] [--threads N]
"""
import argparse
import gc
import importlib.util
import os
import resource
import sys
import time
from pathlib import Path

# This script's folder is on sys.path.
from measuring import Clock, UNetTimer, median, module_bytes, rss_mib, spread, tensor_bytes, walk_tensors
from patch_replay import capture_patch_calls, replay_rows
from patch_variants import VARIANTS, patch_variant

REPO = Path(__file__).resolve().parent.parent
COMFYUI = REPO / ".host" / "ComfyUI"
PACKAGE = "comfyui_flexip"
PROMPT = "a photo of a dog on a beach, high quality"
NEGATIVE = "blurry, low quality"
T_START = time.perf_counter()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=7, help="timed UNet steps per condition (default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px images)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--gammas", default="0.5,1.0", help="gammas to time with FlexIP on (default 0.5,1.0)")
    p.add_argument("--ref-runs", type=int, default=3, help="timed ReferenceEncoder / adapter runs (default 3)")
    p.add_argument("--replay-reps", type=int, default=5, help="replays of each captured patch call (default 5)")
    p.add_argument("--variants", default="layout,fused",
                   help="other versions of the patch to time at the first gamma, of: layout, fused "
                        "(default both; '' for none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=("auto", "yes", "no"), default="auto",
                   help="torch.profiler on one step of off and gamma=0.5 (auto: when the ratio is above 1.03)")
    return p.parse_args()


# --- host --------------------------------------------------------------------------------------

def import_host(threads):
    sys.path[:0] = [str(COMFYUI), str(REPO / "scripts")]
    import torch
    if threads:
        torch.set_num_threads(threads)
    import comfy.cli_args
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.clip_vision
    import comfy.model_management
    import comfy.sample
    import comfy.sd
    import folder_paths
    return torch, comfy, folder_paths


def import_pack():
    """The pack as ComfyUI's nodes.load_custom_node imports a custom node folder: its __init__.py
    executed as a package (ComfyUI names it after the folder's path; here PACKAGE)."""
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def model_files(folder_paths):
    """Builds (or finds, cached) the random full-shape files; registers their folders with ComfyUI."""
    sys.path.insert(0, str(REPO))  # random_models imports flexip_core when it has to build a file
    import random_models
    files = {"checkpoints": random_models.sd15_checkpoint(), "clip_vit_h": random_models.clip_vit_h(),
             "dinov2": random_models.dinov2_large(), "flexip": random_models.flexip_sd15()}
    for folder, key in (("checkpoints", "checkpoints"), ("clip_vision", "clip_vit_h"), ("flexip", "flexip")):
        folder_paths.add_model_folder_path(folder, str(files[key].parent))
    return files


# --- the benchmark -----------------------------------------------------------------------------

class Host:
    """What every measurement needs: torch, ComfyUI's modules, the pack's nodes and modules, the device."""

    def __init__(self, args):
        self.args = args
        self.torch, self.comfy, self.folder_paths = import_host(args.threads)
        self.nodes = import_pack().NODE_CLASS_MAPPINGS
        self.apply_mod = sys.modules[f"{PACKAGE}.nodes.apply"]
        self.patch_mod = sys.modules[f"{PACKAGE}.flexip_core.patch"]
        self.device = self.comfy.model_management.get_torch_device()
        self.cuda = self.device.type == "cuda"
        self.clock = Clock(self.torch, self.device)


def encode_reference(host, files, rows):
    """FlexIPLoader, then ReferenceEncoder on one 512x512 image with the encoders as CLIPVisionLoader
    loads them, and each encoder alone; the encoders are unloaded after. -> (flexip, reference,
    the peak RSS while the encoders were loaded, MiB)."""
    args, comfy, clock, nodes = host.args, host.comfy, host.clock, host.nodes
    (flexip,), t_load = clock(nodes["FlexIPLoader"]().load, files["flexip"].name)
    rows.append(("load", "FlexIPLoader.load", f"{t_load:.2f} s"))

    clip_vision = comfy.clip_vision.load(str(files["clip_vit_h"]))
    dino = comfy.clip_vision.load(str(files["dinov2"]))
    g = host.torch.Generator().manual_seed(args.seed)
    image = host.torch.rand(1, 512, 512, 3, generator=g)  # ComfyUI IMAGE: [B, H, W, C] in [0, 1]
    encoder = nodes["FlexIPReferenceEncoder"]()
    ref_times = []
    for _ in range(1 + args.ref_runs):  # the first run loads the encoders onto the device
        (reference,), dt = clock(encoder.encode, flexip, image, clip_vision, dino, "center", "average")
        ref_times.append(dt)
    rows.append(("reference", "ReferenceEncoder.encode, first run", f"{ref_times[0]:.2f} s"))
    rows.append(("reference", f"ReferenceEncoder.encode, median of {args.ref_runs}",
                 f"{median(ref_times[1:]):.2f} s (+/- {spread(ref_times[1:]):.2f})"))
    # The two encoders alone, as the node runs them (to split the node's time).
    from importlib import import_module
    ref_mod = import_module(f"{PACKAGE}.nodes.reference")
    pre = import_module(f"{PACKAGE}.flexip_core.preprocess")
    enc = import_module(f"{PACKAGE}.flexip_core.encoders")
    for name, cv, fn, spec in (("CLIP ViT-H 224 px", clip_vision, enc.comfy_clip_embeds, flexip.config.clip),
                               ("DINOv2-L 224 px", dino, enc.comfy_dino_patches, flexip.config.dino)):
        pixels = pre.preprocess_reference(image, spec, "center", None)
        ts = [clock(ref_mod.run_encoder, cv, fn, spec, pixels)[1] for _ in range(args.ref_runs)]
        rows.append(("reference", f"  of which {name}, median", f"{median(ts):.2f} s"))
    hwm_encoders = rss_mib("VmHWM")
    comfy.model_management.unload_all_models()
    del clip_vision, dino
    comfy.model_management.cleanup_models()
    gc.collect()
    comfy.model_management.soft_empty_cache()
    return flexip, reference, hwm_encoders


def load_checkpoint(host, files, rows):
    """CheckpointLoaderSimple and CLIPTextEncode equivalents -> (model, positive, negative)."""
    comfy, folder_paths = host.comfy, host.folder_paths
    (model, clip, _vae, _), t_ckpt = host.clock(comfy.sd.load_checkpoint_guess_config, str(files["checkpoints"]),
                                                output_vae=True, output_clip=True,
                                                embedding_directory=folder_paths.get_folder_paths("embeddings"))
    rows.append(("load", "load_checkpoint_guess_config (SD1.5)", f"{t_ckpt:.2f} s"))
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE))
    del clip, _vae
    gc.collect()
    return model, positive, negative


def run_adapters(host, flexip, reference, positive, negative, rows):
    """The Preservation and Personalization Adapter nodes, timed -> (P, S)."""
    nodes, clock, runs = host.nodes, host.clock, host.args.ref_runs
    pres, pers = nodes["FlexIPPreservationAdapter"](), nodes["FlexIPPersonalizationAdapter"]()
    tp, ts = [], []
    for _ in range(1 + runs):
        (P,), dt = clock(pres.apply, flexip, reference)
        tp.append(dt)
        (S,), dt = clock(pers.apply, flexip, reference, positive, negative)
        ts.append(dt)
    rows.append(("adapters", f"PreservationAdapter.apply (cond+uncond), median of {runs}",
                 f"{median(tp[1:]) * 1e3:.0f} ms (first {tp[0] * 1e3:.0f} ms)"))
    rows.append(("adapters", f"PersonalizationAdapter.apply (cond+uncond), median of {runs}",
                 f"{median(ts[1:]) * 1e3:.0f} ms (first {ts[0] * 1e3:.0f} ms)"))
    rows.append(("adapters", "tokens P / S (cond)", f"{tuple(P[0].shape)} / {tuple(S[0].shape)}"))
    return P, S


def patched_models(host, base, flexip, P, S, gammas, variants, rows):
    """The conditions to time: "off" (the base model, which carries the timer), GatedApply at each gamma
    and, at the first gamma, each other version of the patch. -> (models by label, {label: variant})."""
    gapply = host.nodes["FlexIPGatedApply"]()
    models = {"off": base}
    for gamma in gammas:
        (models[f"gamma={gamma:g}"],), dt = host.clock(gapply.apply, base, flexip, P, S, gamma, 1.0, 0.0, 1.0)
        rows.append(("apply", f"GatedApply.apply gamma={gamma:g} (K/V precompute)", f"{dt * 1e3:.0f} ms"))
    on = f"gamma={gammas[0]:g}"
    variant_of = {}
    for variant in variants:
        if variant not in VARIANTS:
            sys.exit(f"--variants: unknown {variant!r}; known: {', '.join(VARIANTS)}")
        (models[f"{variant} {on}"],) = gapply.apply(base, flexip, P, S, gammas[0], 1.0, 0.0, 1.0)
        variant_of[f"{variant} {on}"] = variant
    _, dt = host.clock(models[on].clone)
    rows.append(("apply", "ModelPatcher.clone() of the patched model", f"{dt * 1e3:.0f} ms"))
    return models, variant_of


class Sampler:
    """One timed sampler step per call: comfy.sample.sample with 1 euler step, as KSampler runs it, on the
    model of a condition, with that condition's version of the patch swapped in."""

    def __init__(self, host, models, variant_of, timer, positive, negative):
        comfy, args = host.comfy, host.args
        self.host, self.models, self.variant_of, self.timer = host, models, variant_of, timer
        self.positive, self.negative = positive, negative
        self.latent = comfy.sample.fix_empty_latent_channels(models["off"],
                                                             host.torch.zeros(1, 4, args.latent, args.latent))
        self.noise = comfy.sample.prepare_noise(self.latent, args.seed)

    def __call__(self, label):
        host = self.host
        self.timer.label = label
        with patch_variant(host.patch_mod, self.variant_of.get(label)):
            out, dt = host.clock(host.comfy.sample.sample, self.models[label], self.noise, 1, 7.5, "euler", "normal",
                                 self.positive, self.negative, self.latent, denoise=1.0, disable_pbar=True,
                                 seed=host.args.seed)
        self.timer.label = None
        return out, dt


def time_rounds(step, timer, labels, args):
    """Warm-up rounds, then timed ones, the conditions interleaved and their order rotated every round.
    -> (every output by label, sample()'s wall times by label); the UNet's times are in the timer."""
    outputs, walls = {}, {k: [] for k in labels}
    print(f"timing {args.warmup} warm-up + {args.steps} rounds of {labels} at latent {args.latent}x{args.latent} ...",
          flush=True)
    for r in range(args.warmup + args.steps):
        order = labels[r % len(labels):] + labels[:r % len(labels)]  # each condition in each position
        for label in order:
            out, dt = step(label)
            if r < args.warmup:
                timer.times[label].pop()
                timer.cpu[label].pop()
            else:
                walls[label].append(dt)
            outputs.setdefault(label, []).append(out)
        last = {k: (timer.times[k][-1] if r >= args.warmup else float("nan")) for k in labels}
        print(f"  round {r + 1}{' (warm-up)' if r < args.warmup else ''}: "
              + ", ".join(f"{k} {v:.2f} s" if v >= 1 else f"{k} {v * 1e3:.1f} ms" for k, v in last.items()), flush=True)
    return outputs, walls


def unet_rows(timer, walls, labels, variant_of, on, rounds):
    """The UNet forward's medians and ratios, and what apply_model saw. -> (rows, median wall time by label)."""
    rows = []
    batches = sorted({(shape, tuple(cu)) for label, shape, cu in timer.calls if label})
    per_step = {label: sum(1 for c in timer.calls if c[0] == label) / rounds for label in labels}
    unet = {k: median(v) for k, v in timer.times.items()}
    cpu = {k: median(v) for k, v in timer.cpu.items()}
    for k in labels:
        rows.append(("unet", f"UNet forward {k}", f"wall {unet[k]:.3f} s (+/- {spread(timer.times[k]):.3f}, "
                                                   f"n={len(timer.times[k])}); CPU {cpu[k]:.3f} s; "
                                                   f"sample() wall {median(walls[k]):.3f} s"))
    for k in labels[1:]:
        paired = median([a / b for a, b in zip(timer.times[k], timer.times["off"])])
        rows.append(("unet", f"ratio {k} / off", f"wall {unet[k] / unet['off']:.4f} (median of paired ratios "
                                                f"{paired:.4f}); CPU {cpu[k] / cpu['off']:.4f}; "
                                                f"sample() wall {median(walls[k]) / median(walls['off']):.4f}"))
    for label in variant_of:
        paired = median([a / b for a, b in zip(timer.times[on], timer.times[label])])
        rows.append(("unet", f"ratio {on} / {label} (the pack's patch / that variant)",
                     f"wall {unet[on] / unet[label]:.4f} (median of paired ratios {paired:.4f}); "
                     f"CPU {cpu[on] / cpu[label]:.4f}"))
    if "gamma=0.5" in unet and "gamma=1" in unet:
        rows.append(("unet", "ratio gamma=0.5 / gamma=1 (two branches vs one)",
                     f"wall {unet['gamma=0.5'] / unet['gamma=1']:.4f}; CPU {cpu['gamma=0.5'] / cpu['gamma=1']:.4f}"))
    rows.append(("unet", "batches apply_model saw (shape, cond_or_uncond)", "; ".join(f"{s} {list(c)}" for s, c in batches)))
    rows.append(("unet", "apply_model calls per sample() call", ", ".join(f"{k} {v:g}" for k, v in per_step.items())))
    return rows, unet


def check_rows(outputs, labels, variant_of, on):
    """Same seed gives the same output; FlexIP changes it; how far each variant's output is from the pack's."""
    same = max(float((o - outputs[k][0]).abs().max()) for k in labels for o in outputs[k])
    diff = float((outputs[on][0] - outputs["off"][0]).abs().max())
    rows = [("check", "max |output - first output| within a condition", f"{same:.3g}"),
            ("check", f"max |output {on} - output off|", f"{diff:.3g}")]
    for label in variant_of:
        rows.append(("check", f"max |output {on} - output {label}|",
                     f"{float((outputs[on][0] - outputs[label][0]).abs().max()):.3g}"))
    return rows


def memory_rows(host, patched, P, S, flexip, hwm_encoders):
    """FlexIP's K/V in the patches, its tokens and module, and the process's memory."""
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    kv = list(walk_tensors([(p.kv_p, p.kv_s, p.terms) for p in patches.values()]))
    module = getattr(flexip, "module", flexip)  # the loader's output holds the module, or is it
    rows = [("memory", "K/V in the 16 patches (precomputed + weighted per batch layout)",
             f"{tensor_bytes(kv) / 2**20:.1f} MiB ({len(kv)} tensors, all devices)"),
            ("memory", "P + S tokens (node outputs)", f"{tensor_bytes(list(walk_tensors([P, S]))) / 2**20:.2f} MiB"),
            ("memory", "FlexIP module", f"{module_bytes(module) / 2**20:.0f} MiB (preservation "
                                        f"{module_bytes(module.preservation) / 2**20:.0f}, personalization "
                                        f"{module_bytes(module.personalization) / 2**20:.0f}, projections "
                                        f"{module_bytes(module.projections) / 2**20:.0f}); dtype "
                                        f"{next(module.parameters()).dtype}"),
            ("memory", "peak RSS while the encoders were loaded (VmHWM)", f"{hwm_encoders / 1024:.2f} GiB"),
            ("memory", "RSS now", f"{rss_mib('VmRSS') / 1024:.2f} GiB"),
            ("memory", "process peak RSS (ru_maxrss)",
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")]
    if host.cuda:
        rows.append(("memory", "CUDA max allocated", f"{host.torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
    return rows


def main():
    args = parse_args()
    host = Host(args)
    torch, comfy = host.torch, host.comfy
    files = model_files(host.folder_paths)
    rows, notes = [], []  # rows: (section, item, value)
    print(f"device: {host.device} ({torch.cuda.get_device_name(host.device) if host.cuda else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"attention {comfy.ldm.modules.attention.optimized_attention.__name__}, load average {os.getloadavg()[0]:.2f}",
          flush=True)

    with torch.inference_mode():  # ComfyUI's executor runs every node under inference_mode
        flexip, reference, hwm_encoders = encode_reference(host, files, rows)
        model, positive, negative = load_checkpoint(host, files, rows)
        P, S = run_adapters(host, flexip, reference, positive, negative, rows)

        # The models to time: the wrapper goes on the base model; GatedApply's clone keeps it.
        timer = UNetTimer(host.clock)
        base = model.clone()
        base.set_model_unet_function_wrapper(timer)
        gammas = [float(x) for x in args.gammas.split(",") if x.strip()]
        variants = [v for v in args.variants.split(",") if v.strip()]
        models, variant_of = patched_models(host, base, flexip, P, S, gammas, variants, rows)
        on = f"gamma={gammas[0]:g}"

        step = Sampler(host, models, variant_of, timer, positive, negative)
        labels = list(models)
        outputs, walls = time_rounds(step, timer, labels, args)
        timed, unet = unet_rows(timer, walls, labels, variant_of, on, args.warmup + args.steps)
        rows += timed
        rows += check_rows(outputs, labels, variant_of, on)
        captured = capture_patch_calls(host, step, on)
        rows += replay_rows(host, captured, variants, on, unet["off"])
        del captured
        gc.collect()
        rows += memory_rows(host, models[on], P, S, flexip, hwm_encoders)

        ratio = unet[on] / unet["off"]
        if args.profile == "yes" or (args.profile == "auto" and ratio > 1.03):
            notes += profile(torch, host.device, step, on)

    print()
    print_table(rows)
    for n in notes:
        print(n)
    print(f"\ntotal wall time {time.perf_counter() - T_START:.0f} s; load average (1, 5, 15 min) now "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


def profile(torch, device, step, on):
    """Top operators of one step of each, by self time, and the largest differences."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tables = {}
    for label in ("off", on):
        with torch_profile(activities=acts) as prof:
            step(label)
        tables[label] = {e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()}
    lines = [f"\nprofile: one step each, operator self CPU time, largest increases {on} vs off:"]
    keys = set(tables["off"]) | set(tables[on])
    deltas = sorted(((tables[on].get(k, (0, 0))[0] - tables["off"].get(k, (0, 0))[0], k) for k in keys), reverse=True)
    for d, k in deltas[:12]:
        a, b = tables["off"].get(k, (0, 0)), tables[on].get(k, (0, 0))
        lines.append(f"  {k:40s} off {a[0] / 1e3:9.1f} ms x{a[1]:<5d} {on} {b[0] / 1e3:9.1f} ms x{b[1]:<5d} (+{d / 1e3:.1f} ms)")
    lines.append(f"  total self CPU: off {sum(v[0] for v in tables['off'].values()) / 1e6:.2f} s, "
                 f"{on} {sum(v[0] for v in tables[on].values()) / 1e6:.2f} s")
    return lines


def print_table(rows):
    width = max(len(item) for _, item, _ in rows)
    section = None
    for sec, item, value in rows:
        if sec != section:
            print(f"[{sec}]")
            section = sec
        print(f"  {item:<{width}}  {value}")


if __name__ == "__main__":
    main()
