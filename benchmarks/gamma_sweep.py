#!/usr/bin/env python
"""Benchmark: a whole gamma sweep in one sampling run (FlexIP Gamma Sweep, a latent batch of N) against
N separate runs at one gamma each, same settings, same noise, in one process.

Each run is one call of comfy.sample.sample (what KSampler runs: CFG batches cond + uncond), with
euler and the normal schedule. The batched run gets a latent batch of N and GatedApply's sweep
input; separate run i gets image i's noise alone and GatedApply's slider at gamma i, so batched
image i and run i must agree (the check printed at the end). Rounds alternate the order (batched
first, then separate first, ...) after an untimed warm-up; medians of wall and process CPU time.
A model_function_wrapper (gated_apply.UNetTimer) splits each run's wall time into the UNet
forwards and the rest (ComfyUI's per-call setup: loading the run's patched model, CFG, sampler).

The nodes are the pack's real classes, imported as ComfyUI imports a custom node folder; the model
files are the full-shape random ones of scripts/random_models.py (speed does not depend on the
weights' values). P and S come from the adapter nodes on random reference features, so no image
encoder is loaded.

Run:  .host/venv/bin/python benchmarks/gamma_sweep.py [--gammas 0,0.25,0.5,0.75,1] [--latent 32] [--steps 3]
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gated_apply import Clock, UNetTimer, import_host, import_pack, median, model_files, spread  # noqa: E402

PROMPT = "a photo of a dog on a beach, high quality"
NEGATIVE = "blurry, low quality"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gammas", default="0,0.25,0.5,0.75,1", help="the sweep: one gamma per image (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px images; 64 = 512 px)")
    p.add_argument("--steps", type=int, default=3, help="sampling steps per run (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    torch, comfy, folder_paths = import_host(args.threads)
    from tqdm import tqdm
    pack = import_pack()
    files = model_files(folder_paths)
    nodes = pack.NODE_CLASS_MAPPINGS
    device = comfy.model_management.get_torch_device()
    clock = Clock(torch, device)
    gammas = [float(x) for x in args.gammas.split(",")]
    n = len(gammas)

    with torch.inference_mode():  # ComfyUI's executor runs every node under inference_mode
        (flexip,) = nodes["FlexIPLoader"]().load(files["flexip"].name)
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(files["checkpoints"]), output_vae=False)
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE))
        g = torch.Generator().manual_seed(args.seed)
        from importlib import import_module
        features = import_module(f"{pack.__name__}.flexip_core.reference").ReferenceFeatures(
            torch.randn(1, flexip.config.clip.dim, generator=g), torch.randn(1, 256, flexip.config.dino.dim, generator=g))
        (P,) = nodes["FlexIPPreservationAdapter"]().apply(flexip, features)
        (S,) = nodes["FlexIPPersonalizationAdapter"]().apply(flexip, features, positive, negative)

        timer = UNetTimer(clock)
        timed = model.clone()
        timed.set_model_unet_function_wrapper(timer)  # GatedApply's clones keep it
        gated = nodes["FlexIPGatedApply"]()
        (sweep,) = nodes["FlexIPGammaSweep"]().make(", ".join(map(str, gammas)))
        (batched_model,) = gated.apply(timed, flexip, P, S, 0.5, 1.0, 0.0, 1.0, sweep=sweep)
        single_models = [gated.apply(timed, flexip, P, S, gamma, 1.0, 0.0, 1.0)[0] for gamma in gammas]

        latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(n, 4, args.latent, args.latent))
        noise = comfy.sample.prepare_noise(latent, args.seed)

        def sample(patched, rows, steps):
            return comfy.sample.sample(patched, noise[rows], steps, 7.5, "euler", "normal", positive, negative,
                                       latent[rows], denoise=1.0, disable_pbar=True, seed=args.seed)

        def batched(steps=args.steps):
            return sample(batched_model, slice(0, n), steps)

        def separate(steps=args.steps):
            return torch.cat([sample(m, slice(i, i + 1), steps) for i, m in enumerate(single_models)])

        runs = {"batched": batched, "separate": separate}
        for run in runs.values():  # warm-up: first calls load the model and allocate
            run(1)
        times = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        unet = {k: [] for k in runs}
        outputs = {}
        print(f"{n} gammas {gammas}, latent {args.latent}x{args.latent}, {args.steps} euler steps, cfg 7.5, "
              f"{args.rounds} rounds, device {device}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for r in tqdm(range(args.rounds), desc="rounds", unit="round"):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                c0 = time.process_time()
                timer.label, before = name, len(timer.times.get(name, []))
                outputs[name], dt = clock(runs[name])
                timer.label = None
                times[name].append(dt)
                cpu[name].append(time.process_time() - c0)
                unet[name].append(sum(timer.times[name][before:]))

    wall = {k: median(v) for k, v in times.items()}
    cpu_med = {k: median(v) for k, v in cpu.items()}
    print()
    unet_med = {k: median(v) for k, v in unet.items()}
    for name in runs:
        print(f"  {name:9s} wall {wall[name]:8.2f} s (+/- {spread(times[name]):.2f}, n={len(times[name])})   "
              f"CPU {cpu_med[name]:8.2f} s   per image {wall[name] / n:.2f} s   "
              f"of which UNet forwards {unet_med[name]:.2f} s, the rest {wall[name] - unet_med[name]:.2f} s")
    print(f"  ratio batched / separate: wall {wall['batched'] / wall['separate']:.3f}, "
          f"CPU {cpu_med['batched'] / cpu_med['separate']:.3f} "
          f"(median of paired ratios {median([a / b for a, b in zip(times['batched'], times['separate'])]):.3f}); "
          f"speed-up {wall['separate'] / wall['batched']:.2f}x; UNet forwards alone "
          f"{unet_med['batched'] / unet_med['separate']:.3f}")
    difference = (outputs["batched"] - outputs["separate"]).abs().max().item()
    spread_between = (outputs["batched"][0] - outputs["batched"][-1]).abs().max().item()
    print(f"  check: max |batched image i - separate run i| = {difference:.3g} "
          f"(image 0 vs image {n - 1} of the sweep: {spread_between:.3g})")
    print("  load average (1, 5, 15 min) now: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
