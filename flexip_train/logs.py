"""What a run shows while it trains: a progress bar (loss, alpha, beta, it/s, ETA; optional),
metrics.csv, TensorBoard scalars, and a loss plot next to them. Only the main process writes."""
import csv
import resource
from pathlib import Path

from tqdm import tqdm


def process_memory_mb():
    """Peak resident memory of this process so far (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_memory_mb():
    """Resident memory of this process now, in MiB (from /proc; peak memory where that is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return process_memory_mb()


class MetricsLog:
    """enabled: write anything (the main process); progress: show the progress bar too."""

    def __init__(self, run_dir, enabled, total, start=0, progress=True):
        self.enabled = enabled
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = run_dir / "metrics.csv"
        self.csv_file = open(self.csv_path, "a", newline="")
        self.writer = None
        from torch.utils.tensorboard import SummaryWriter
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start or None)
        self.bar = tqdm(total=total, initial=start, desc="training", unit="step", dynamic_ncols=True,
                        disable=not progress)

    def step(self, step, metrics, write):
        if not self.enabled:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", alpha=f"{metrics['alpha']:.3f}",
                             beta=f"{metrics['beta']:.3f}", refresh=False)
        if not write:
            return
        row = {"step": step, **metrics}
        if self.writer is None:
            self.writer = csv.DictWriter(self.csv_file, fieldnames=list(row))
            if self.csv_file.tell() == 0:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.csv_file.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"train/{name}", value, step)

    def close(self):
        if not self.enabled:
            return
        self.bar.close()
        self.csv_file.close()
        self.tensorboard.close()
        plot_metrics(self.csv_path)


def plot_metrics(csv_path):
    """metrics.png beside metrics.csv: loss (raw and smoothed) and the gate's alpha and beta over steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()]
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    window = max(1, len(loss) // 20)
    smooth = [sum(loss[max(0, i - window + 1):i + 1]) / len(loss[max(0, i - window + 1):i + 1]) for i in range(len(loss))]
    fig, (ax_loss, ax_gate) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, loss, alpha=0.3, label="loss")
    ax_loss.plot(steps, smooth, label=f"mean of {window}")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("epsilon loss")
    ax_loss.legend()
    ax_gate.plot(steps, [float(r["alpha"]) for r in rows], label="alpha (image gamma)")
    ax_gate.plot(steps, [1 - float(r["beta"]) for r in rows], label="1 - beta (video gamma)")
    ax_gate.set_ylim(0, 1)
    ax_gate.set_xlabel("step")
    ax_gate.set_title("gate")
    ax_gate.legend()
    fig.tight_layout()
    path = Path(csv_path).with_suffix(".png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
