"""The Markdown report: Table 1 (mean and 95% interval per metric, mRank), the smoothness of each
method's control, what happened during generation, and the plots (plots.py). Every metric's
column names its backbone (CLIP-I [CLIP ViT-B-32]), so no number stands without its model."""
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from flexip_core.metrics import mrank
from flexip_core.smoothness import sweep_smoothness

from .plots import contact_sheet, front_plot, metrics_vs_control
from .runner import RUN_LOG, read_jsonl
from .stats import mean_ci

REPORT = "report.md"
METRIC_NAMES = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "dino_i": "DINO-I", "clip_iqa": "CLIP-IQA", "aesthetic": "Aesthetic"}
SMOOTHNESS_NAMES = {"rho_clip_i": "ρ(control, CLIP-I)", "rho_clip_t": "ρ(control, CLIP-T)",
                    "jump_clip_i": "largest jump CLIP-I", "jump_clip_t": "largest jump CLIP-T",
                    "front_area": "front area"}


def with_backbone(label, metric, backbones):
    """'CLIP-I' -> 'CLIP-I [CLIP ViT-B-32]' when the metric's backbone is known."""
    backbone = (backbones or {}).get(metric)
    return f"{label} [{backbone}]" if backbone else label


def fmt(mean, half, digits=3):
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")


def table1(rows, metrics, control_names, backbones=None):
    """{(method, control): {metric: (mean, half, n)}} and the rows' mRank over the means."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["control"])].append(row)
    stats = {key: {m: mean_ci([r[m] for r in group]) for m in metrics} for key, group in sorted(groups.items())}
    ranks = mrank({key: {m: s[m][0] for m in metrics} for key, s in stats.items()}, metrics)
    header = (["method", "control", "images"] + [with_backbone(METRIC_NAMES[m], m, backbones) for m in metrics]
              + ["mRank"])
    lines = [header, ["---"] * len(header)]
    for (method, control), s in stats.items():
        lines.append([method, f"{control_names.get(method, 'control')} = {control:g}", str(len(groups[(method, control)]))]
                     + [fmt(*s[m][:2], digits=2 if m == "aesthetic" else 3) for m in metrics] + [f"{ranks[(method, control)]:.2f}"])
    return stats, ranks, lines


def sweeps(rows):
    """{method: [smoothness numbers of each (subject, prompt, seed) sweep with >= 2 control values]}."""
    by_sweep = defaultdict(list)
    for row in rows:
        by_sweep[(row["method"], row["subject"], row["prompt_index"], row["seed"])].append(row)
    out = defaultdict(list)
    for (method, *_), sweep in sorted(by_sweep.items()):
        if len(sweep) >= 2:
            out[method].append(sweep_smoothness([r["control"] for r in sweep], [r["clip_i"] for r in sweep],
                                                [r["clip_t"] for r in sweep]))
    return out


def smoothness_table(rows, backbones=None):
    per_method = sweeps(rows)
    # The front area spans both CLIP metrics, which one CLIP scores.
    header = ["method", "sweeps"] + [with_backbone(label, "clip_i" if key.endswith("clip_i") else "clip_t", backbones)
                                     for key, label in SMOOTHNESS_NAMES.items()]
    lines = [header, ["---"] * len(header)]
    for method, numbers in per_method.items():
        cells = []
        for key in SMOOTHNESS_NAMES:
            mean, half, n = mean_ci([s[key] for s in numbers])
            flat = len(numbers) - n
            cells.append(fmt(mean, half) + (f" ({flat} flat)" if flat else ""))
        lines.append([method, str(len(numbers))] + cells)
    return per_method, lines


def markdown_table(lines):
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def run_history(out):
    """What happened while generating, from runs.jsonl, as Markdown lines."""
    lines = []
    for event in read_jsonl(Path(out) / RUN_LOG):
        kind = event["event"]
        if kind == "start":
            lines.append(f"- {event['time']}: run started on {', '.join(event['servers'])} (queue depth "
                         f"{event['queue_depth']}): {event['images']} images, {event['found_on_disk']} already on disk, "
                         f"{event['to_generate']} to generate")
        elif kind == "end":
            per_server = ", ".join(f"{url}: {n}" for url, n in event["per_server"].items()) or "none"
            lines.append(f"- {event['time']}: run ended: {event['generated']} generated ({per_server}), "
                         f"{event['given_up']} given up, {event['left']} left for lack of a server")
        elif kind == "server_down":
            lines.append(f"- {event['time']}: **server {event['server']} stopped answering** after "
                         f"{event['images_before']} images ({event['message']}); its prompts went to "
                         f"{', '.join(event['servers_left']) or 'no server (none left)'}")
        elif kind == "unreachable":
            lines.append(f"- {event['time']}: server {event['server']} did not answer at the start: not used")
        elif kind == "given_up":
            lines.append(f"- {event['time']}: gave up {event['image']} after failing on {', '.join(event['tried'])}")
        elif kind == "stopped":
            lines.append(f"- {event['time']}: **run stopped**: {event['message']}")
    reassigned = sum(e["event"] == "reassigned" for e in read_jsonl(Path(out) / RUN_LOG))
    failed = [e for e in read_jsonl(Path(out) / RUN_LOG) if e["event"] == "prompt_failed"]
    if reassigned:
        lines.append(f"- {reassigned} prompts in flight on a server that stopped were sent to another server")
    if failed:
        lines.append(f"- {len(failed)} prompt failures (each retried on another server); the first: "
                     f"{failed[0]['image']} on {failed[0]['server']}: `{failed[0]['message'][:300]}`")
    return lines


def write_report(spec, out, rows, models, note=None, backbones=None):
    """report.md and plots/*.png under out; returns the report's path. backbones: {metric column: backbone}."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    metrics = [m for m in METRIC_NAMES if rows and m in rows[0]]
    control_names = {name: m.control_name for name, m in spec.methods.items()}
    expected = len(spec.jobs())
    text = [f"# Evaluation: {spec.name}", ""]
    if note:
        text += [f"> {note}", ""]
    text += [f"{len(rows)} of {expected} images scored; {len(spec.subjects)} subjects, "
             f"{sum(len(s.prompts) for s in spec.subjects)} prompts, seeds {list(spec.seeds)}.", ""]
    text += ["## Methods", ""] + [f"- {name}: workflow `{m.workflow_path.name}`, {m.control_name} in {list(m.controls)}"
                                  for name, m in spec.methods.items()] + [""]
    text += ["## Scoring models", ""] + [f"- {metric}: {name}" for metric, name in models.items()] + [""]
    if metrics:
        _, _, lines = table1(rows, metrics, control_names, backbones)
        text += ["## Table 1", "", "Mean ± half-width of the 95% Student-t interval over images (images of one "
                 "subject are not independent, so the interval is optimistic). mRank: the mean rank over the "
                 "metrics among the rows (1 = best).", "", markdown_table(lines), ""]
    if "clip_i" in metrics and "clip_t" in metrics:
        per_method, lines = smoothness_table(rows, backbones)
        if per_method:
            text += ["## Smoothness of the control", "",
                     "Per sweep (one subject, prompt and seed over the method's control values), averaged over sweeps "
                     "(± 95% interval). ρ: Spearman's rank correlation of the control with the metric (±1: monotone; "
                     "a flat curve has none and is counted apart). Largest jump: the steepest step between "
                     "neighbouring control values over the sweep's mean rate (1: even steps; n−1 for n values: all "
                     "change in one step). Front area: the area of the (CLIP-T, CLIP-I) plane the sweep's points "
                     "dominate, from (0, 0).", "", markdown_table(lines), ""]
        figures = [("CLIP-I and CLIP-T against the control", metrics_vs_control(rows, control_names, plots)),
                   ("The CLIP-I vs CLIP-T front", front_plot(rows, control_names, plots))]
    else:
        figures = []
    sheet = contact_sheet(spec, out, plots)
    if sheet:
        figures.append((f"One subject's sweep ({spec.subjects[0].id})", sheet))
    text += ["## Plots", ""] + [f"![{title}](plots/{path.name})\n" for title, path in figures if path]
    history = run_history(out)
    if history:
        text += ["## Generation", ""] + history + [""]
    seconds = [r["seconds"] for r in rows if math.isfinite(r.get("seconds", math.nan))]
    if seconds:
        text += [f"Server time per image: {np.mean(seconds):.2f} s on average (ComfyUI's execution, "
                 "without queueing).", ""]
    path = out / REPORT
    path.write_text("\n".join(text))
    return path
