"""The ablation: every training variant reported under one folder, in one table and one plot."""
import json
from pathlib import Path

from .plots import pyplot
from .report import _f
from .summary import AXES, BASELINE, FLEXIP, LABELS, RECOLOUR_AXES

ABLATION_TARGETS = ("spearman_identity", "spearman_prompt", "identity_jump", "identity_at_1", "prompt_at_0", "front",
                    "time", "time_cpu")
RECOLOUR_TARGETS = ("spearman_identity", "spearman_prompt", "identity_jump", "identity_at_1", "prompt_at_0", "front")


def _target_cells(rows, keys):
    """One cell per target: its values, in bold where it is missed."""
    cells = []
    for key in keys:
        row = rows.get(key)
        if row is None:
            cells.append("n/a")
            continue
        text = ", ".join(_f(v, 2) for v in row["values"]) or "none"
        cells.append(text if row["met"] else f"**{text}**")
    return cells


def write_ablation(folder):
    """ablation.md and ablation.png over every <folder>/<variant>/summary.json: each variant's targets
    and curves on the claim's metric, and the first evaluator's ends beside them."""
    folder = Path(folder)
    summaries = {path.parent.name: json.loads(path.read_text()) for path in sorted(folder.glob("*/summary.json"))}
    if not summaries:
        return None
    lines = ["# FlexIP in miniature: the training variants", "",
             "One row per variant (each has its own report in its folder). Targets on the claim's metric "
             "(scoring.py); met targets in plain, missed in bold. Curves: FlexIP's mean over seeds and cases at "
             "gamma 0, 0.2, ... 1. The first evaluator's identity and prompt at gamma 0 and 1 are kept for "
             "comparison.", "",
             "| variant | " + " | ".join(ABLATION_TARGETS) + " | identity curve | prompt curve | layout copying curve "
             "| baseline identity (strength) | first evaluator: identity 0 / 1, prompt 0 / 1 | recolour: "
             + " | recolour: ".join(RECOLOUR_TARGETS) + " | recolour: identity curve | recolour: prompt curve "
             "| recolour: colour copying curve |",
             "|---" * (len(ABLATION_TARGETS) + len(RECOLOUR_TARGETS) + 9) + "|"]
    for name, summary in summaries.items():
        cells = _target_cells(summary["targets"], ABLATION_TARGETS)
        ours = summary[FLEXIP]
        theirs = summary.get(BASELINE)
        first = summary["first_evaluator"][FLEXIP]
        cells += [" ".join(_f(v, 2) for v in ours[axis]) for axis in AXES]
        cells.append(" ".join(_f(v, 2) for v in theirs["identity"]) if theirs else "n/a")
        cells.append(f"{_f(first['identity'][0], 2)} / {_f(first['identity'][-1], 2)}, "
                     f"{_f(first['prompt'][0], 2)} / {_f(first['prompt'][-1], 2)}")
        recoloured = summary.get("recolour")
        cells += _target_cells(recoloured["targets"], RECOLOUR_TARGETS) if recoloured else ["n/a"] * len(RECOLOUR_TARGETS)
        cells += [" ".join(_f(v, 2) for v in recoloured[FLEXIP][axis]) if recoloured else "n/a" for axis in RECOLOUR_AXES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Variants:", ""] + [f"- {name}: {s['facts']['variant']['description']}" for name, s in summaries.items()]
    lines += ["", "![every variant's curves](ablation.png)", ""]
    (folder / "ablation.md").write_text("\n".join(lines) + "\n")
    plt = pyplot()
    # a second row for the recolour cases where any variant has them
    panels = [(None, axis) for axis in AXES]
    if any("recolour" in s for s in summaries.values()):
        panels += [("recolour", axis) for axis in RECOLOUR_AXES]
    fig, axes = plt.subplots(len(panels) // 3, 3, figsize=(15, 4 * (len(panels) // 3)), squeeze=False)
    for panel, (ax, (cases, axis)) in enumerate(zip(axes.flat, panels)):
        baselines = {}  # variants with the same references share one baseline: drawn once
        for k, (name, summary) in enumerate(summaries.items()):
            if cases is not None and cases not in summary:
                continue
            shown = summary if cases is None else summary[cases]
            m = shown[FLEXIP]
            ax.errorbar(m["values"], m[axis], yerr=m[f"{axis}_se"], marker="o", capsize=2, color=f"C{k}",
                        label=f"FlexIP {name}")
            if BASELINE in shown:
                baselines.setdefault(summary["facts"]["variant"].get("references", "scene"), shown[BASELINE])
        for style, (references, b) in zip(("k--", "k:"), sorted(baselines.items())):
            ax.plot(b["values"], b[axis], style, label=f"baseline, {references} references (strength)")
        ax.set_xlabel("control (gamma; strength for the black baselines)")
        ax.set_title(LABELS[axis] + (" (recolour cases)" if cases else " (scene cases)"))
        ax.set_ylim(-0.02, 1.02)
        if panel % 3 == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "ablation.png", dpi=110)
    plt.close(fig)
    return folder / "ablation.md"
