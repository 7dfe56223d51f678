#!/usr/bin/env python
"""Benchmark: a FlexIP training step on the full-shape SD1.5, against a plain UNet forward+backward.

The step is the shipped one: the frozen SD1.5, CLIP ViT-H/14 and DINOv2-L loaded by ComfyUI
(flexip_train.comfy_base.FrozenBase, gradient checkpointing on), a flexip_train.loop.Trainer
(CFG dropout, gate, the nodes' attn2 patches, AdamW, gradient clipping) under accelerate's
autocast. At each batch size it times, on the same inputs:

  plain        the UNet alone, forward + backward, no FlexIP patches. The frozen UNet has nothing
               to train, so the noisy latents get requires_grad: the backward runs through every
               block down to the input, as FlexIP's does down to its first cross-attention.
  flexip       Trainer.loss + backward: the adapters, the 16 patched layers and the UNet.
  step         Trainer.optimizer_step with a feature cache: the above plus gradient clipping and
               AdamW (what a run with [data] feature_cache does after its first epoch).
  step+enc     Trainer.optimizer_step without a cache: CLIP-H, DINOv2-L, the VAE and the text
               encoder run every step too.

Without --batch it doubles the batch from 1 while a step+enc step fits in GPU memory (one warm-up
and one timed step each, printed), then measures all four at the last batch that fit. It prints
steps/s, images/s and peak memory of each, and its time over plain's: flexip / plain is what
FlexIP adds to the UNet's own forward+backward.

Speed and memory do not depend on the weights' values: without --checkpoint etc. it uses the
full-shape random files of scripts/random_models.py (built once into .host/models).

Run (GPU, 512 px, bf16):  python benchmarks/train_step.py --json train_step.json
Check on the CPU (tiny):  .host/venv/bin/python benchmarks/train_step.py --device cpu --latent 8 --batch 1 --steps 2
"""
import argparse
import gc
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMFYUI = REPO / ".host" / "ComfyUI"
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
CAPTIONS = ("a photo of a dog on a beach, high quality", "a red mug on a wooden table")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if there is one")
    p.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px, the paper's size)")
    p.add_argument("--precision", choices=("bf16", "fp16", "no"), default="bf16",
                   help="accelerate's mixed precision, as [optim] mixed_precision (default bf16)")
    p.add_argument("--batch", type=int, default=0, help="only this batch size (default: the largest that fits)")
    p.add_argument("--max-batch", type=int, help="stop the doubling here (default 512 on a GPU; on the CPU, where "
                                                  "running out of memory kills the process, give it or --batch)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3; medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off (default on)")
    p.add_argument("--checkpoint", help="an SD1.5 checkpoint (default: the random full-shape one)")
    p.add_argument("--clip-vision", help="CLIP ViT-H/14, HF format (default: the random full-shape one)")
    p.add_argument("--dino", help="DINOv2-L, HF hub format (default: the random full-shape one)")
    p.add_argument("--comfyui", default=str(COMFYUI), help=f"ComfyUI folder (default {COMFYUI})")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args()


def import_comfy(folder, cpu):
    sys.path.insert(0, str(folder))
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu  # before comfy.model_management is imported
    from flexip_train.comfy_base import import_comfy as import_from
    return import_from(folder)


def model_files(args):
    import random_models
    return (args.checkpoint or random_models.sd15_checkpoint(), args.clip_vision or random_models.clip_vit_h(),
            args.dino or random_models.dinov2_large())


def make_trainer(base, accelerator, args, folder):
    """A Trainer on a one-picture manifest (it only sets up the run; the batches are made below),
    with the run's defaults: AdamW lr 1e-4, weight decay 0.01, clipping at 1, 5% CFG dropout each."""
    import numpy as np
    from PIL import Image

    from flexip_core.config import SD15
    from flexip_train.builders import images_manifest
    from flexip_train.config import config_from_dict
    from flexip_train.loop import Trainer
    from flexip_train.manifest import write_manifest
    picture = folder / "data" / "picture.png"
    picture.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)).save(picture)
    picture.with_suffix(".txt").write_text(CAPTIONS[0])
    samples, _ = images_manifest(picture.parent, progress=False)
    write_manifest(samples, folder / "data.jsonl")
    config = config_from_dict({
        "run": {"output_dir": str(folder / "run")},
        "data": {"manifests": [str(folder / "data.jsonl")], "resolution": args.latent * 8, "num_workers": 0,
                 "feature_cache": str(folder / "cache")},
        "optim": {"mixed_precision": args.precision},
        "model": {"gradient_checkpointing": not args.no_checkpointing},
    })
    return Trainer(config, base, SD15, accelerator)


def make_items(batch, trainer, seed):
    """Dataset-like items: half image samples, half variant samples (both gate branches active)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    side, ref = trainer.dataset.resolution, trainer.dataset.reference_size
    return [{"reference": torch.rand(1, ref, ref, 3, generator=g), "reference_mask": torch.ones(1, ref, ref),
             "target": torch.rand(side, side, 3, generator=g), "caption": CAPTIONS[i % 2], "is_variant": i % 2 == 1,
             "index": i} for i in range(batch)]


class Measure:
    def __init__(self, device):
        import torch
        self.torch, self.cuda = torch, device == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, run, warmup, steps):
        """-> (median seconds per call, peak memory in MiB: CUDA allocated, else the process's peak RSS)."""
        torch = self.torch
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            run()
        times = []
        for _ in range(steps):
            self.sync()
            started = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return statistics.median(times), peak


def measurements(trainer, items):
    """{name: callable running it once} for one batch of items."""
    from flexip_core.training import epsilon_loss
    from flexip_train.loop import encode_items
    base, acc = trainer.base, trainer.accelerator
    keys = [(0, i) for i in range(len(items))]
    cache = trainer.cache
    encode_items(base, items, cache)  # fills the cache for these items
    batch = encode_items(base, items, cache)

    def plain():
        _, timesteps, noise, _ = trainer.draws(keys, batch.latents.shape[1:])
        noisy, sigma = base.add_noise(batch.latents, timesteps, noise)
        noisy.requires_grad_(True)
        with acc.autocast():
            x0 = base.denoise(noisy, sigma, batch.text, {})
        acc.backward(epsilon_loss(x0, batch.latents, sigma, base.v_prediction))

    def flexip():
        acc.backward(trainer.loss(batch, keys))
        trainer.optimizer.zero_grad(set_to_none=True)

    def step():
        trainer.cache = cache
        trainer.optimizer_step([(items, keys)])

    def step_with_encoders():
        trainer.cache = None
        try:
            trainer.optimizer_step([(items, keys)])
        finally:
            trainer.cache = cache

    return {"plain": plain, "flexip": flexip, "step": step, "step+enc": step_with_encoders}


def out_of_memory(error):
    import torch
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def attempt(run, what):
    """run() -> its result, or None if it ran out of GPU memory (then the memory is released)."""
    import torch
    try:
        return run()
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        print(f"  {what}: out of memory ({str(error).splitlines()[0][:100]})", flush=True)
    gc.collect()  # outside the except block: its traceback no longer holds the tensors
    torch.cuda.empty_cache()
    return None


def largest_batch(trainer, measure, args):
    """Double the batch from 1 while a training step without a feature cache (the heaviest: the
    encoders run too) fits; one warm-up and one timed step each. -> the last batch that fit."""
    best, batch = 0, 1
    while batch <= args.max_batch:
        def step():
            return measure(measurements(trainer, make_items(batch, trainer, seed=batch))["step+enc"], 1, 1)
        result = attempt(step, f"batch {batch}")
        trainer.optimizer.zero_grad(set_to_none=True)
        if result is None:
            break
        print(f"  batch {batch:4d} step+enc {result[0] * 1000:9.1f} ms/step  {batch / result[0]:8.2f} images/s  "
              f"peak {result[1]:9.0f} MiB", flush=True)
        best, batch = batch, batch * 2
    return best


def run_batch(trainer, batch, measure, args):
    """{name: (median seconds, peak MiB)} of each measurement at this batch size, or None if one ran
    out of memory."""
    runs = attempt(lambda: measurements(trainer, make_items(batch, trainer, seed=batch)), f"batch {batch}")
    if runs is None:
        return None
    results = {}
    for name, run in runs.items():
        result = attempt(lambda: measure(run, args.warmup, args.steps), f"batch {batch} {name}")
        trainer.optimizer.zero_grad(set_to_none=True)
        if result is None:
            return None
        results[name] = result
    return results


def main():
    args = parse_args()
    import torch
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu" and not (args.batch or args.max_batch):
        sys.exit("train_step.py: on the CPU give --batch or --max-batch (running out of memory there kills the process)")
    args.max_batch = args.max_batch or 512
    if args.threads:
        torch.set_num_threads(args.threads)
    from accelerate import Accelerator
    accelerator = Accelerator(mixed_precision=args.precision, cpu=device == "cpu")  # before ComfyUI picks a device
    comfy = import_comfy(args.comfyui, cpu=device == "cpu")
    from flexip_core.config import SD15
    from flexip_train.comfy_base import FrozenBase

    started = time.perf_counter()
    checkpoint, clip_vision, dino = model_files(args)
    base = FrozenBase.from_files(checkpoint, clip_vision, dino, SD15, gradient_checkpointing=not args.no_checkpointing)
    unet = base.model.model.diffusion_model
    loaded = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else 0.0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, "
          f"ComfyUI device {comfy.model_management.get_torch_device()}, UNet weights {next(unet.parameters()).dtype}, "
          f"attention {base.attention.__name__}, autocast {args.precision}, gradient checkpointing "
          f"{'off' if args.no_checkpointing else 'on'}, latent {args.latent} ({args.latent * 8} px); "
          f"models loaded in {time.perf_counter() - started:.0f} s"
          + (f", {loaded:.0f} MiB on the GPU" if device == "cuda" else ""), flush=True)

    measure = Measure(device)
    with tempfile.TemporaryDirectory() as folder:
        trainer = make_trainer(base, accelerator, args, Path(folder))
        if args.batch:
            batch = args.batch
        else:
            print("finding the largest batch:", flush=True)
            batch = largest_batch(trainer, measure, args)
        while batch and (results := run_batch(trainer, batch, measure, args)) is None:
            batch //= 2  # a measurement ran out of memory where the search's step fit: try half
    if not batch:
        sys.exit("train_step.py: not even batch 1 fits")

    print(f"\n{'batch' if args.batch else 'largest batch that fit'}: {batch} ({args.latent * 8} px, {args.precision}, "
          f"gradient checkpointing {'off' if args.no_checkpointing else 'on'}), medians of {args.steps} steps")
    print(f"{'':10s} {'steps/s':>9s} {'images/s':>9s} {'peak MiB':>10s} {'time / plain':>13s}")
    for name, (seconds, peak) in results.items():
        print(f"{name:10s} {1 / seconds:9.3f} {batch / seconds:9.2f} {peak:10.0f} {seconds / results['plain'][0]:13.3f}")
    if device == "cpu":
        print("(peak MiB on the CPU: the process's peak RSS so far, models included)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "latent": args.latent, "precision": args.precision, "gradient_checkpointing": not args.no_checkpointing,
            "unet_dtype": str(next(unet.parameters()).dtype), "loaded_mib": loaded, "batch": batch,
            "largest_that_fit": not args.batch, "steps": args.steps,
            "results": {name: {"seconds": s, "steps_per_s": 1 / s, "images_per_s": batch / s, "peak_mib": m,
                               "time_over_plain": s / results["plain"][0]} for name, (s, m) in results.items()}},
            indent=1))

if __name__ == "__main__":
    main()
