"""The miniature's report of one variant: its numbers (summary.py) against the issue's targets, as
Markdown and JSON, with its plots (plots.py)."""
import json
import math
import shutil
from pathlib import Path

import numpy as np

from . import plots, scoring, world
from .summary import (AXES, BASELINE, FLEXIP, LABELS, RECOLOUR_AXES, build_minutes, claim_targets, identity_gap,
                      ranks, rescore, summarize, summarize_claim, targets)


def write_report(folder, size, cases, results, facts, cache, drawable, recolour=None):
    """The report on the claim's metric (scoring.py), with the first evaluator's numbers beside it;
    recolour: (cases, results) of the recolour cases (recolour.py), reported in a section of their own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = facts.get("stage_seconds", {})
    jobs = facts.get("jobs", 1)
    minutes = build_minutes(seconds, jobs) if seconds else None
    first = summarize(results)
    first["targets"] = targets(first, minutes)
    first["mrank"] = ranks(first)
    scores = rescore(results, cases, drawable)
    summary = summarize_claim(scores, results)
    cpu = facts.get("stage_cpu_seconds", {})
    cpu_minutes = build_minutes(cpu, jobs) if cpu and all(v is not None for v in cpu.values()) else None
    summary.update(targets=claim_targets(summary, minutes, cpu_minutes), mrank=ranks(summary), drawable=drawable,
                   counted=sorted(scoring.counted(drawable)), first_evaluator=first, facts=facts)
    if BASELINE in scores:
        summary["identity_gap"] = identity_gap(scores, results[BASELINE]["values"])
    if recolour is not None:
        recoloured_scores = rescore(recolour[1], recolour[0], drawable)
        recoloured = summarize_claim(recoloured_scores, recolour[1])
        recoloured["targets"] = claim_targets(recoloured, None)
        if BASELINE in recoloured_scores:
            recoloured["identity_gap"] = identity_gap(recoloured_scores, recolour[1][BASELINE]["values"])
        summary["recolour"] = recoloured
        plots.controls(recoloured, folder / "recolour_controls.png", RECOLOUR_AXES,
                       "recolour cases: the prompt asks for another body colour than the reference's")
        plots.gamma_sweep_sheet(recolour[1], recolour[0], folder / "recolour_sweep.png",
                                heading="recolour cases: the prompt names another colour; gamma 0 should follow it, "
                                "gamma 1 keep the reference's")
    plots.controls(summary, folder / "controls.png")
    plots.front(summary, folder / "front.png")
    plots.smoothness(summary, folder / "smoothness.png")
    plots.attributes(summary, folder / "attributes.png")
    plots.contact_sheet(results, cases, folder / "contact_sheet.png")
    plots.gamma_sweep_sheet(results, cases, folder / "gamma_sweep.png")
    for stage in facts.get("stages", []):
        metrics = Path(cache) / stage / "metrics.png"
        role = stage.split("-")[0]
        if role in ("flexip", "baseline") and metrics.exists():
            shutil.copyfile(metrics, folder / f"training_{role}.png")
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=_json))
    (folder / "report.md").write_text(markdown(summary, size, cases, facts, seconds, minutes))
    return summary


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value))


def _f(value, digits=3):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _targets_table(rows):
    lines = ["| target | values | met |", "|---|---|---|"]
    for row in rows.values():
        lines.append(f"| {row['target']} | {', '.join(_f(v) for v in row['values'])} | {'yes' if row['met'] else '**no**'} |")
    return lines


def _gap_line(summary):
    """The identity-at-1 target's difference with its paired standard error (summary.identity_gap)."""
    if "identity_gap" not in summary:
        return []
    gap = summary["identity_gap"]
    return ["", f"FlexIP's identity at gamma 1 minus the baseline's at its best strength ({gap['strength']:g}), paired "
            f"over the same cases and sampling seeds: {gap['difference']:+.3f} ± {gap['se']:.3f} (one standard error "
            "of the per-case difference; the strength is chosen on the same pictures, which favours the baseline)."]


def _curve_row(label, curve, se=None):
    cells = [_f(v) + (f" ± {_f(e)}" if se is not None else "") for v, e in zip(curve, se or [None] * len(curve))]
    return f"| {label} | " + " | ".join(cells) + " |"


def recolour_section(recoloured, drawable):
    """The recolour cases' targets, curves and smoothness (the build-time rows are the scene cases')."""
    values = recoloured[FLEXIP]["values"]
    lines = ["", "## Recolour cases: prompts that contradict the reference", "",
             "The same subjects, references and asked-for scenes, with a prompt that also names a body colour other "
             "than the reference's (recolour.py). **identity**: pattern and mark (no prompt names them); **prompt**: "
             "shape, the asked colour, background, position, size; **colour copying**: the reference's colour drawn "
             "instead of the asked one. Here gamma has a real conflict to trade. These targets are reported beside "
             "the scene cases'; the default variant is chosen on the scene cases (rule fixed before the results).", ""]
    lines += _targets_table(recoloured["targets"]) + _gap_line(recoloured)
    lines += ["", "| control | " + " | ".join(f"{v:g}" for v in values) + " |", "|---" * (len(values) + 1) + "|"]
    for method, control in ((FLEXIP, "gamma"), (BASELINE, "strength")):
        if method in recoloured:
            m = recoloured[method]
            for axis in RECOLOUR_AXES + ("layout_copy",):
                lines.append(_curve_row(f"{method} {LABELS[axis]} ({control})", m[axis], m[f"{axis}_se"]))
    base = recoloured["base"]
    lines += ["", "**Base model alone**: " + ", ".join(f"{LABELS[axis]} {_f(base[axis][0])} ± {_f(base[axis + '_se'][0])}"
                                                        for axis in RECOLOUR_AXES) + ".", ""]
    lines += ["| method | curve | Spearman identity | Spearman prompt | largest/mean jump identity | front area |",
              "|---|---|---|---|---|---|"]
    for method in (FLEXIP, BASELINE):
        if method in recoloured:
            m = recoloured[method]
            for name, x in [(f"seed {k}", x) for k, x in enumerate(m["per_seed"])] + [("seed mean", m["mean_curve"])]:
                lines.append(f"| {method} | {name} | {_f(x['rho_identity'])} | {_f(x['rho_prompt'])} | "
                             f"{_f(x['jump_identity'])} | {_f(x['front_area'])} |")
    lines += ["", "![recolour cases against the control](recolour_controls.png)", "",
              "![recolour cases: FlexIP's gamma sweep](recolour_sweep.png)"]
    return lines


def markdown(summary, size, cases, facts, seconds, minutes):
    values = summary[FLEXIP]["values"]
    counted, drawable = summary["counted"], summary["drawable"]
    lines = [f"# FlexIP in miniature: report ({size.name} run, variant {facts['variant']['name']})", "",
             f"Variant: {facts['variant']['description'] or facts['variant']['name']} "
             f"(`{json.dumps(facts['variant'])}`).", ""]
    if "slider" in facts:  # the calibrated slider (calibrate.py)
        slider = facts["slider"]
        lines += [f"Slider: calibrated, FlexIP's branches blended by gamma^{slider['exponent']:g} "
                  "(flexip_core.slider), k fitted on training subjects' scene and recolour cases at the blend weights "
                  f"{', '.join(f'{w:g}' for w in slider['blend_weights'])}, identity averaged over the sampling seeds "
                  f"{', '.join(str(s) for s in slider['seeds'])}. The worse case set's largest/mean identity "
                  "jump at each candidate k: " + ", ".join(f"{float(k):g}: {_f(v, 2)}" for k, v in slider["worst_jump"].items())
                  + ".", ""]
    lines += [f"Held-out subjects only: {len({c.subject for c in cases})} subjects never seen in training, "
              f"{len(cases)} cases (reference in one scene, a prompt that names the shape and asks for a scene "
              f"different in background, position and size), sampling seeds {list(size.seeds)}, ComfyUI's KSampler "
              f"({size.sampling.steps} euler steps, CFG {size.sampling.cfg}).", "",
              "Scores (benchmarks/nano/scoring.py): each picture is decoded at the placement that fits it best. "
              "**identity**: the subject's attributes the prompt does not name; **prompt**: the attributes it "
              "names; **layout copying**: the reference's position and size taken where the prompt asked for "
              f"others. Counted attributes: {', '.join(counted)} (the base model reconstructs each at least "
              f"{scoring.COUNTED_ACCURACY:.0%} of the time; see below). ± is one standard error over cases (of the "
              "seed-mean score per case).", "",
              "Ties: Spearman is computed on the curves' means as they are; exactly equal means get their average "
              "rank, and no difference within one standard error is merged into a tie, so a reversal smaller than "
              "one standard error still counts against Spearman. Reversals larger than one standard error of the "
              "paired per-case step are listed separately.", ""]
    lines += ["## Targets", ""] + _targets_table(summary["targets"]) + _gap_line(summary)
    lines += ["", "Values: per seed for the Spearman and jump rows; (FlexIP, base) and (FlexIP at gamma 1, the "
              "baseline's best) for the end rows; the baseline strengths whose front point FlexIP misses for the "
              "front row; minutes (stage build times) for the time.", ""]
    lines += ["## Sweeps (mean over seeds and cases ± one standard error)", "",
              "| control | " + " | ".join(f"{v:g}" for v in values) + " |", "|---" * (len(values) + 1) + "|"]
    for method, control in ((FLEXIP, "gamma"), (BASELINE, "strength")):
        if method in summary:
            m = summary[method]
            for axis in AXES:
                lines.append(_curve_row(f"{method} {LABELS[axis]} ({control})", m[axis], m[f"{axis}_se"]))
    base = summary["base"]
    lines += ["", "**Base model alone**: " + ", ".join(f"{LABELS[axis]} {_f(base[axis][0])} ± "
                                                        f"{_f(base[axis + '_se'][0])}" for axis in AXES) + ".", ""]
    lines += ["## What the base model can draw", "",
              "Each case's target (its subject in the prompt's scene) noised half-way along the sampler's schedule "
              "(KSampler denoise 0.5) and denoised by the base alone with its complete caption (the pattern and "
              "mark are never named): the fraction of reconstructions that keep each attribute.", "",
              "| " + " | ".join(scoring.ATTRIBUTES) + " |", "|---" * len(scoring.ATTRIBUTES) + "|",
              "| " + " | ".join(f"{drawable[a]:.2f}" + ("" if a in counted else " (not counted)")
                                for a in scoring.ATTRIBUTES) + " |", ""]
    lines += ["## Per attribute (fraction of pictures)", "",
              "| method | attribute | " + " | ".join(f"{v:g}" for v in values) + " |", "|---" * (2 + len(values)) + "|"]
    for method in ("base", FLEXIP, BASELINE):
        if method in summary:
            for kind, label in (("agree", "as asked"), ("copied", "copied from the reference")):
                for name, curve in summary[method]["attributes"][kind].items():
                    lines.append(f"| {method} | {name} {label} | " + " | ".join(_f(v, 2) for v in curve) + " |")
    lines += ["", "## Smoothness (flexip_core.smoothness)", "",
              "| method | curve | Spearman identity | Spearman prompt | largest/mean jump identity | "
              "largest/mean jump prompt | front area |", "|---|---|---|---|---|---|---|"]
    for method in (FLEXIP, BASELINE):
        if method not in summary:
            continue
        m = summary[method]
        curves = [(f"seed {s}", x) for s, x in zip(size.seeds, m["per_seed"])] + [("seed mean", m["mean_curve"])]
        for name, x in curves:
            lines.append(f"| {method} | {name} | {_f(x['rho_identity'])} | {_f(x['rho_prompt'])} | "
                         f"{_f(x['jump_identity'])} | {_f(x['jump_prompt'])} | {_f(x['front_area'])} |")
    for method in (FLEXIP, BASELINE):
        if method in summary:
            for axis, rows in summary[method]["reversals"].items():
                text = "; ".join(f"{a:g} -> {b:g}: {d:+.3f} (s.e. {e:.3f})" for a, b, d, e in rows) or "none"
                lines.append(f"- {method}, {axis}: reversals beyond one standard error: {text}.")
    if summary["mrank"]:
        lines += ["", "mRank of the two controls over front area, Spearman of identity, minus Spearman of prompt and "
                  "minus the identity jump (1 = best): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["mrank"].items())
                  + "."]
    if "recolour" in summary:
        lines += recolour_section(summary["recolour"], summary["drawable"])
    first = summary["first_evaluator"]
    lines += ["", "## The first evaluator's numbers (evaluate.py: nearest world picture, shape counted as identity)",
              "", "Kept beside the new ones so that the change of metric is visible.", ""]
    lines += _targets_table(first["targets"])
    lines += ["", "| control | " + " | ".join(f"{v:g}" for v in values) + " |", "|---" * (len(values) + 1) + "|"]
    for method in (FLEXIP, BASELINE):
        if method in first:
            lines.append(_curve_row(f"{method} identity", first[method]["identity"]))
            lines.append(_curve_row(f"{method} prompt", first[method]["prompt"]))
    lines += ["", f"Base model alone: identity {_f(first['base']['identity'])}, prompt {_f(first['base']['prompt'])}.",
              ""]
    lines += ["## Plots", "", "![scores against the control](controls.png)", "", "![front](front.png)", "",
              "![smoothness](smoothness.png)", "", "![attributes](attributes.png)", "",
              "![contact sheet](contact_sheet.png)", ""]
    for name in ("flexip", "baseline"):
        lines.append(f"![{name} training](training_{name}.png)")
    lines += ["", "## Build", "", "What the stand-in encoders know: each held-out subject's picture (random scene) matched to its "
              "nearest neighbour among training pictures; the fraction of neighbours that share each attribute "
              "(chance: 1 over the number of values).", "",
              "| encoder | " + " | ".join(world.SUBJECT_ATTRIBUTES + world.SCENE_ATTRIBUTES) + " |",
              "|---" * (1 + len(world.SUBJECT_ATTRIBUTES + world.SCENE_ATTRIBUTES)) + "|"]
    for name, label in (("clip", "CLIP stand-in (image-caption contrastive, global vector)"),
                        ("dino", "DINOv2 stand-in (self-supervised, patch tokens)")):
        known = facts["encoder_knowledge"][name]
        lines.append(f"| {label} | " + " | ".join(f"{known[a]:.0%}" for a in world.SUBJECT_ATTRIBUTES
                                                  + world.SCENE_ATTRIBUTES) + " |")
    lines += ["| chance | " + " | ".join(f"{1 / len(world.VALUES[a]):.0%}" for a in world.SUBJECT_ATTRIBUTES
                                          + world.SCENE_ATTRIBUTES) + " |", "",
              f"- Settings: {json.dumps(facts['size'])}"]
    for name in ("flexip", "baseline"):
        training = facts.get(f"{name}_training")
        if training:
            lines.append(f"- {name}: {training['steps']} steps, global batch {training['global_batch']}, "
                         f"{training['samples']} samples ({training['variant_samples']} multi-view), "
                         f"alpha {training['alpha']:.3f}, beta {training['beta']:.3f}.")
    lines.append("- Stage build times (minutes): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items())
                 + (f"; total {minutes:.1f}." if minutes is not None else "."))
    cpu, jobs = facts.get("stage_cpu_seconds", {}), facts.get("jobs", 1)
    if cpu and all(v is not None for v in cpu.values()):
        lines.append("- The same stages' CPU time (one torch thread: about their time on a quiet core, however busy "
                     "the machine was): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in cpu.items())
                     + f"; the build's length from them {build_minutes(cpu, jobs):.1f} min"
                     + (" (two lanes: the encoders beside the base, the baseline beside FlexIP, the recolour "
                        "sweeps beside the scene sweeps)." if jobs == 2 else "."))
    lines.append(f"- This invocation took {facts['wall_time'] / 60:.1f} min (cached stages are not rebuilt).")
    return "\n".join(lines) + "\n"


