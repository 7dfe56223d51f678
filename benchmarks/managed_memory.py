#!/usr/bin/env python
"""Benchmark: what the real ComfyUI server keeps in memory after the basic FlexIP workflow and
POST /free {"unload_models": true, "free_memory": true} (ComfyUI's "Unload models" + "Free model
and node cache"), for this checkout of the pack and, with --baseline, another one (e.g. a git
worktree of an earlier commit) in the same run.

Per checkout, one fresh server (the pinned test host on the CPU, the full-shape random model files
of scripts/random_models.py) with only that checkout in its custom_nodes (a temporary
--base-directory): the basic API workflow at --size px and --steps steps, then /free, then the
same workflow again. The server's RSS (VmRSS) and peak RSS (VmHWM) come from /proc/PID/status:
idle, after the first run, after /free (the lowest of samples over --settle seconds; the worker
thread handles the flags after a tiny wake-up prompt, collects garbage, then memory settles),
after the second run. The second run's wall time shows the cost of loading again what /free
released.

With --server-args the server runs with those ComfyUI flags too (e.g. "--lowvram", "--cache-ram"; a VRAM mode
replaces --cpu, which both hosts refuse beside one: without a GPU, ComfyUI then stops at startup). From
the server's launch a thread samples its RSS every 0.25 s and reads model management's log lines as they
appear, so the run prints what was loaded and unloaded when, with the RSS at that moment, and each
stage's sampled peak; --plot draws the RSS over time with the stages and loads marked, --json keeps
the numbers. FLEXIP_HOST selects the test host (scripts/host.py).

Run:  .host/venv/bin/python benchmarks/managed_memory.py [--baseline /tmp/wt-old] [--size 64] [--steps 2]
      FLEXIP_HOST=0.33.0 .host/0.33.0/venv/bin/python benchmarks/managed_memory.py --server-args="--lowvram" \
          --plot /tmp/rss.png --json /tmp/rss.json
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import comfy_server  # noqa: E402
import flexip_client  # noqa: E402
import host  # noqa: E402

MIB = 2**20
WAKE = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="another checkout of the pack to measure first, for comparison")
    p.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    p.add_argument("--steps", type=int, default=2, help="sampling steps (default 2)")
    p.add_argument("--settle", type=float, default=8.0, help="seconds to sample RSS after /free (default 8)")
    p.add_argument("--server-args", default="", help="more ComfyUI flags, one string (default none)")
    p.add_argument("--plot", type=Path, help="write this checkout's RSS over time here (PNG)")
    p.add_argument("--json", type=Path, help="write the stages, the RSS samples and the timed events here")
    return p.parse_args()


# Model management's log lines: what it loads and unloads, and how much of it.
MODEL_EVENTS = re.compile(r"Requested to load|[Ll]oaded (completely|partially)|[Uu]nload|[Oo]ffload|prepared for dynamic"
                          r"|Set vram state|Device: |Total VRAM")
# Both hosts refuse these beside --cpu (one exclusive group of flags), so they go without it: on a machine
# without a GPU the server then stops at startup (no CUDA device), as it would for a user there.
VRAM_MODES = {"--gpu-only", "--highvram", "--normalvram", "--lowvram", "--novram"}


def model_events(log_path, start):
    """Model management's log lines from offset `start` of the server log, and the offset after them."""
    text = log_path.read_text(errors="replace")
    return [line.strip() for line in text[start:].splitlines() if MODEL_EVENTS.search(line)], len(text)


def model_files():
    """The random full-shape files (built once, cached in .host/models), by their names in ComfyUI."""
    sys.path.insert(0, str(host.COMFYUI))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # random_models builds with ComfyUI's classes when a file is missing
    import random_models
    return {"checkpoint": random_models.sd15_checkpoint().name, "clip_vision": random_models.clip_vit_h().name,
            "dino": random_models.dinov2_large().name, "flexip": random_models.flexip_sd15().name}


class Trace(threading.Thread):
    """The server's RSS every `interval` s and model management's log lines as they appear, on one clock
    (seconds from the launch), with stage marks."""

    def __init__(self, pid, log_path, interval=0.25):
        super().__init__(daemon=True)
        self.pid, self.log_path, self.interval = pid, log_path, interval
        self.start_time = time.perf_counter()
        self.samples, self.events, self.marks = [], [], []   # (s, rss), (s, rss, line), (s, stage)
        self.done = threading.Event()

    def now(self):
        return time.perf_counter() - self.start_time

    def run(self):
        offset = 0
        while not self.done.is_set():
            try:
                rss = memory(self.pid)[0]
            except (FileNotFoundError, ProcessLookupError):
                return
            seconds = self.now()
            self.samples.append((seconds, rss))
            if self.log_path.exists():
                lines, offset = model_events(self.log_path, offset)
                self.events += [(seconds, rss, line) for line in lines]
            self.done.wait(self.interval)

    def mark(self, stage):
        """The stage that starts now."""
        self.marks.append((self.now(), stage))

    def stop(self):
        self.done.set()
        self.join()

    def stage_spans(self):
        """{stage: (start, end)} in seconds, each mark to the next (the last to the last sample)."""
        ends = [t for t, _ in self.marks[1:]] + [self.samples[-1][0]]
        return {stage: (start, end) for (start, stage), end in zip(self.marks, ends)}

    def peak(self, start, end):
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def plot_trace(trace, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot([t for t, _ in trace.samples], [rss / MIB for _, rss in trace.samples], lw=1.2, color="C0")
    for t, stage in trace.marks:
        ax.axvline(t, color="0.6", ls="--", lw=0.8)
        ax.text(t, 1.0, f" {stage}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="0.3")
    for t, rss, line in trace.events:
        if "Requested to load" in line:
            ax.plot(t, rss / MIB, "o", color="C3", ms=4)
            ax.annotate(line.split("Requested to load", 1)[1].strip(), (t, rss / MIB), fontsize=7,
                        xytext=(3, -10), textcoords="offset points", color="C3")
    ax.set_xlabel("seconds from the server's launch")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def memory(pid):
    """(VmRSS, VmHWM) of a process in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))


def reference_image(folder):
    import numpy as np
    from PIL import Image
    pixels = (np.random.RandomState(0).rand(120, 96, 3) * 255).astype("uint8")
    path = folder / "flexip_memory_reference.png"
    Image.fromarray(pixels).save(path)
    return path


def measure(pack, files, args, folder):
    """One server with `pack` as its only custom node: {stage: (rss, hwm)}, the runs' wall times, the count
    of FlexIP loads and the RSS trace."""
    base = folder / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "comfyui-flexip").symlink_to(pack.resolve(), target_is_directory=True)
    port = comfy_server.free_port()
    log_path = folder / "server.log"
    comfy_server.RUN.mkdir(parents=True, exist_ok=True)
    flags = shlex.split(args.server_args)
    cmd = [str(host.PYTHON), "main.py", *([] if VRAM_MODES & set(flags) else ["--cpu"]), "--listen", "127.0.0.1",
           "--port", str(port), "--disable-auto-launch", "--base-directory", str(base),
           "--extra-model-paths-config", str(comfy_server.write_model_paths()), "--database-url", "sqlite:///:memory:",
           *flags]
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, cwd=host.COMFYUI, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    trace = Trace(server.pid, log_path)
    trace.mark("start")
    trace.start()
    try:
        url = f"http://127.0.0.1:{port}"
        comfy_server.wait_until_serving(server, url, lambda: log_path.read_text(errors="replace"))
        client = flexip_client.Client(url)
        workflow = json.loads((REPO / "example_workflows" / "api" / "flexip_basic_api.json").read_text())
        prompt = flexip_client.override(workflow, image=client.upload_image(reference_image(folder)),
                                        models=files, size=args.size, steps=args.steps, seed=1)
        stages, times = {"idle": memory(server.pid)}, {}
        for run in ("first run", "second run"):
            trace.mark(run)
            start = time.perf_counter()
            client.run(prompt)
            times[run] = time.perf_counter() - start
            stages[f"after {run}"] = memory(server.pid)
            if run == "first run":
                trace.mark("/free")
                client.post_json("/free", {"unload_models": True, "free_memory": True})
                # The worker thread reads the flags when it wakes; still busy after the last prompt
                # (its garbage collection), it misses the wake-up and would wait for the next prompt
                # (ComfyUI 0.3.75). A tiny prompt wakes it; the flags are handled right after it.
                client.run(WAKE)
                samples, end = [], time.time() + args.settle
                while time.time() < end:
                    time.sleep(0.25)
                    samples.append(memory(server.pid))
                stages["after /free"] = min(samples)
        trace.stop()
        print("  model management, seconds from the launch and the server's RSS then:")
        for seconds, rss, line in trace.events:
            print(f"    {seconds:7.1f} s {rss / MIB:7.0f} MiB  {line}")
        print("  sampled peak RSS per stage:", ", ".join(
            f"{stage} {trace.peak(*span) / MIB:.0f} MiB" for stage, span in trace.stage_spans().items()))
        return stages, times, log_path.read_text().count("Requested to load FlexIP"), trace
    finally:
        trace.done.set()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def main():
    args = parse_args()
    files = model_files()
    packs = ([("baseline", args.baseline)] if args.baseline else []) + [("this checkout", REPO)]
    results = {}
    for name, pack in packs:
        with tempfile.TemporaryDirectory(prefix="flexip-memory-") as folder:
            print(f"{name}: {pack}", flush=True)
            results[name] = measure(pack, files, args, Path(folder))
    print(f"\nbasic workflow, {args.size} px, {args.steps} steps, CPU, ComfyUI {host.SELECTED.version()} "
          f"(host {host.SELECTED.name}), flags {args.server_args or '(none)'}; server RSS / peak RSS (VmHWM) in MiB")
    print(f"{'':28}" + "".join(f"{name:>24}" for name in results))
    for stage in results[packs[-1][0]][0]:
        print(f"{stage:28}" + "".join(f"{r[0][stage][0] / MIB:>13.0f} / {r[0][stage][1] / MIB:>7.0f}"
                                      for r in results.values()))
    for run in ("first run", "second run"):
        print(f"{run + ' wall (s)':28}" + "".join(f"{r[1][run]:>24.1f}" for r in results.values()))
    print(f"{'FlexIP loads by model mgmt':28}" + "".join(f"{r[2]:>24}" for r in results.values()))
    trace = results["this checkout"][3]
    title = (f"ComfyUI {host.SELECTED.version()} (host {host.SELECTED.name}), flags {args.server_args or '(none)'}: "
             f"basic workflow {args.size} px, {args.steps} steps, CPU")
    if args.plot:
        plot_trace(trace, title, args.plot)
    if args.json:
        args.json.write_text(json.dumps({
            "title": title, "stages_rss_hwm": results["this checkout"][0], "wall_s": results["this checkout"][1],
            "stage_peaks": {stage: trace.peak(*span) for stage, span in trace.stage_spans().items()},
            "samples": trace.samples, "events": trace.events, "marks": trace.marks}, indent=1))
    if args.baseline:
        (old, old_t, *_), (new, new_t, *_) = results["baseline"], results["this checkout"]
        print("\nthis checkout against the baseline:")
        for stage in new:
            print(f"  {stage:26} RSS {(new[stage][0] - old[stage][0]) / MIB:+7.0f} MiB "
                  f"(x{new[stage][0] / old[stage][0]:.3f}), peak {(new[stage][1] - old[stage][1]) / MIB:+7.0f} MiB "
                  f"(x{new[stage][1] / old[stage][1]:.3f})")
        freed_old, freed_new = old["after first run"][0] - old["after /free"][0], new["after first run"][0] - new["after /free"][0]
        print(f"  freed by /free: baseline {freed_old / MIB:.0f} MiB, this checkout {freed_new / MIB:.0f} MiB "
              f"({(freed_new - freed_old) / MIB:+.0f} MiB)")
        print(f"  second run wall: x{new_t['second run'] / old_t['second run']:.2f}")


if __name__ == "__main__":
    main()
