"""The report's PNG plots (matplotlib, Agg): the metrics against the control, the CLIP-I vs CLIP-T
front, and a contact sheet of one subject's sweep."""
import textwrap
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .stats import mean_ci  # noqa: E402

CONTACT_ROWS = 12


def _means(rows, metric):
    """{method: (controls ascending, means, half-widths of the 95% interval)}."""
    per = defaultdict(lambda: defaultdict(list))
    for row in rows:
        per[row["method"]][row["control"]].append(row[metric])
    out = {}
    for method, by_control in sorted(per.items()):
        controls = sorted(by_control)
        stats = [mean_ci(by_control[c]) for c in controls]
        out[method] = (np.array(controls), np.array([s[0] for s in stats]), np.nan_to_num(np.array([s[1] for s in stats])))
    return out


def _control_label(control_names):
    names = sorted(set(control_names.values()))
    return names[0] if len(names) == 1 else "control (" + ", ".join(f"{m}: {n}" for m, n in control_names.items()) + ")"


def metrics_vs_control(rows, control_names, folder):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric, title in zip(axes, ("clip_i", "clip_t"), ("CLIP-I (subject kept)", "CLIP-T (prompt followed)")):
        for method, (controls, mean, half) in _means(rows, metric).items():
            ax.plot(controls, mean, marker="o", label=method)
            ax.fill_between(controls, mean - half, mean + half, alpha=0.2)
        ax.set_xlabel(_control_label(control_names))
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Mean over subjects, prompts and seeds (band: 95% interval)")
    path = folder / "metrics_vs_control.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def front_plot(rows, control_names, folder):
    fig, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    clip_t, clip_i = _means(rows, "clip_t"), _means(rows, "clip_i")
    for method in clip_i:
        controls, y, _ = clip_i[method]
        _, x, _ = clip_t[method]
        ax.plot(x, y, marker="o", label=method)
        for c, xi, yi in zip(controls, x, y):
            ax.annotate(f"{control_names.get(method, 'control')}={c:g}", (xi, yi), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("CLIP-T (prompt followed)")
    ax.set_ylabel("CLIP-I (subject kept)")
    ax.set_title("The trade-off each control traces (means)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = folder / "front.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def contact_sheet(spec, out, folder, subject=None):
    """The first subject (or the one named): its reference, then one row per method and prompt
    (first seed) across the control values. None if none of its images exists."""
    subject = spec.subject(subject) if subject else spec.subjects[0]
    seed = spec.seeds[0]
    lines = [(method, p, prompt) for method in spec.methods.values()
             for p, prompt in enumerate(subject.prompts)][:CONTACT_ROWS]
    columns = max(len(m.controls) for m in spec.methods.values())
    jobs = {(j.method, j.prompt_index, j.control): j for j in spec.jobs() if j.subject == subject.id and j.seed == seed}
    if not any((out / j.image).is_file() for j in jobs.values()):
        return None
    fig, axes = plt.subplots(len(lines), columns + 1, figsize=(1.8 * (columns + 1), 1.9 * len(lines) + 0.4),
                             squeeze=False, constrained_layout=True)
    for r, (method, p, prompt) in enumerate(lines):
        axes[r][0].imshow(Image.open(subject.image).convert("RGB"))
        axes[r][0].set_title("reference", fontsize=7)
        axes[r][0].set_ylabel("\n".join(textwrap.wrap(f"{method.name}: {prompt}", 28)[:4]), fontsize=6)
        for c in range(columns):
            ax = axes[r][c + 1]
            if c < len(method.controls):
                control = method.controls[c]
                path = out / jobs[(method.name, p, control)].image
                if path.is_file():
                    ax.imshow(Image.open(path).convert("RGB"))
                else:
                    ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7)
                ax.set_title(f"{method.control_name} = {control:g}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{subject.id} ({subject.name}), seed {seed}", fontsize=9)
    path = folder / "contact_sheet.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
