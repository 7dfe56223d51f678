"""The miniature's report: numbers against the issue's targets (Markdown and JSON) and plots.

All smoothness and ranking numbers come from flexip_core.smoothness and flexip_core.metrics, with
the identity score in CLIP-I's place and the prompt score in CLIP-T's. A sweep's curve is the
mean score over the evaluated cases at each control value, one curve per sampling seed; the
targets are checked on every seed's curve.
"""
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flexip_core.metrics import mrank
from flexip_core.smoothness import sweep_smoothness

from . import world
from .baseline import NAME as BASELINE

FLEXIP = "FlexIP"
# The targets; "far above" and "close to" are made numbers here, before any result.
FAR_ABOVE = 0.2   # identity at gamma 1 at least this much above the base model's (scores are fractions)
CLOSE_TO = 0.1    # prompt score at gamma 0 within this of the base model's
MAX_MINUTES = 45
MRANK_METRICS = ("front_area", "rho_identity", "neg_rho_prompt", "neg_jump_identity")


def summarize(results):
    """Per method: mean curves per seed and over seeds, and the smoothness numbers of each."""
    out = {"base": {"identity": float(results["base"]["identity"].mean()),
                    "prompt": float(results["base"]["prompt"].mean()),
                    "identity_per_seed": results["base"]["identity"].mean(axis=(1, 2)).tolist(),
                    "prompt_per_seed": results["base"]["prompt"].mean(axis=(1, 2)).tolist(),
                    "attributes": _attributes(results["base"])}}
    for method in (FLEXIP, BASELINE):
        if method not in results:
            continue
        r = results[method]
        values = [float(v) for v in r["values"]]
        identity, prompt = r["identity"].mean(-1), r["prompt"].mean(-1)  # [seeds, values]
        per_seed = [_smoothness(values, i, p) for i, p in zip(identity, prompt)]
        out[method] = {"values": values, "identity": identity.mean(0).tolist(), "prompt": prompt.mean(0).tolist(),
                       "identity_per_seed": identity.tolist(), "prompt_per_seed": prompt.tolist(),
                       "per_seed": per_seed, "mean_curve": _smoothness(values, identity.mean(0), prompt.mean(0)),
                       "attributes": _attributes(r)}
    return out


ATTRIBUTE_SCORES = {"subject_attributes": ("kept", world.SUBJECT_ATTRIBUTES),
                    "prompt_attributes": ("as prompted", world.SCENE_ATTRIBUTES),
                    "reference_attributes": ("as in the reference", world.SCENE_ATTRIBUTES)}


def _attributes(r):
    """{score: {attribute: [mean over seeds and cases, per control value]}}."""
    return {score: {a: r[score][..., i].mean(axis=(0, 2)).tolist() for i, a in enumerate(names)}
            for score, (_, names) in ATTRIBUTE_SCORES.items()}


def _smoothness(values, identity, prompt):
    s = sweep_smoothness(values, identity, prompt)
    return {"rho_identity": s["rho_clip_i"], "rho_prompt": s["rho_clip_t"], "jump_identity": s["jump_clip_i"],
            "jump_prompt": s["jump_clip_t"], "front_area": s["front_area"]}


def targets(summary, minutes):
    flexip, base = summary[FLEXIP], summary["base"]
    seeds = flexip["per_seed"]
    rows = {
        "spearman_identity": ("Spearman(gamma, identity) >= 0.9 on every seed",
                              [s["rho_identity"] for s in seeds], all(s["rho_identity"] >= 0.9 for s in seeds)),
        "spearman_prompt": ("Spearman(gamma, prompt) <= -0.9 on every seed",
                            [s["rho_prompt"] for s in seeds], all(s["rho_prompt"] <= -0.9 for s in seeds)),
        "identity_jump": ("largest / mean neighbour jump of identity <= 2 on every seed",
                          [s["jump_identity"] for s in seeds], all(s["jump_identity"] <= 2 for s in seeds)),
        "identity_at_1": (f"identity at gamma 1 >= base model's + {FAR_ABOVE}",
                          [flexip["identity"][-1], base["identity"]], flexip["identity"][-1] >= base["identity"] + FAR_ABOVE),
        "prompt_at_0": (f"|prompt at gamma 0 - base model's| <= {CLOSE_TO}",
                        [flexip["prompt"][0], base["prompt"]], abs(flexip["prompt"][0] - base["prompt"]) <= CLOSE_TO),
    }
    if BASELINE in summary:
        ours, theirs = flexip["mean_curve"]["front_area"], summary[BASELINE]["mean_curve"]["front_area"]
        rows["front"] = ("front area (prompt x identity) of FlexIP >= the baseline's", [ours, theirs], ours >= theirs)
    if minutes is not None:
        rows["time"] = (f"the whole build, from nothing, <= {MAX_MINUTES} min", [minutes], minutes <= MAX_MINUTES)
    return {k: {"target": t, "values": [_round(v) for v in values], "met": bool(met)} for k, (t, values, met) in rows.items()}


def ranks(summary):
    table = {}
    for method in (FLEXIP, BASELINE):
        if method in summary:
            m = summary[method]["mean_curve"]
            table[method] = {"front_area": m["front_area"], "rho_identity": m["rho_identity"],
                             "neg_rho_prompt": -m["rho_prompt"], "neg_jump_identity": -m["jump_identity"]}
    return mrank(table, MRANK_METRICS) if len(table) > 1 else {}


def _round(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


# --- Plots -------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_controls(summary, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, score in zip(axes, ("identity", "prompt")):
        for method, label, colour in ((FLEXIP, "FlexIP: gamma", "C0"), (BASELINE, f"{BASELINE}: strength", "C1")):
            if method in summary:
                m = summary[method]
                per_seed = np.asarray(m[f"{score}_per_seed"])
                ax.errorbar(m["values"], per_seed.mean(0), yerr=per_seed.std(0), marker="o", capsize=3,
                            label=label, color=colour)
        ax.axhline(summary["base"][score], color="grey", linestyle="--", label="base model alone")
        ax.set_xlabel("control (gamma for FlexIP, strength for the baseline)")
        ax.set_ylabel(f"{score} score")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{score} score against the control (held-out subjects)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_front(summary, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for method, colour, control in ((FLEXIP, "C0", "gamma"), (BASELINE, "C1", "strength")):
        if method in summary:
            m = summary[method]
            area = m["mean_curve"]["front_area"]
            ax.plot(m["prompt"], m["identity"], marker="o", color=colour, label=f"{method} (area {area:.3f})")
            for v, x, y in zip(m["values"], m["prompt"], m["identity"]):
                ax.annotate(f"{control[0]}={v:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([summary["base"]["prompt"]], [summary["base"]["identity"]], "s", color="grey", label="base model alone")
    ax.set_xlabel("prompt score")
    ax.set_ylabel("identity score")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("identity against prompt: the front of each control")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attributes(summary, path):
    """Each attribute along each sweep: the subject's kept, the scene as prompted, the scene copied."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (score, (what, names)) in zip(axes, ATTRIBUTE_SCORES.items()):
        for k, name in enumerate(names):
            for method, style in ((FLEXIP, "-"), (BASELINE, "--")):
                if method in summary:
                    ax.plot(summary[method]["values"], summary[method]["attributes"][score][name], style, marker="o",
                            color=f"C{k}", label=f"{name} ({method})")
            ax.axhline(summary["base"]["attributes"][score][name][0], color=f"C{k}", linestyle=":", linewidth=0.8)
        ax.set_title(f"{'subject' if score == 'subject_attributes' else 'scene'} attributes {what}")
        ax.set_xlabel("control (dotted: base model alone)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_smoothness(summary, path):
    """Each neighbouring step's share of the identity change, in units of the mean step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for k, (method, colour) in enumerate(((FLEXIP, "C0"), (BASELINE, "C1"))):
        if method not in summary:
            continue
        m = summary[method]
        values = np.asarray(m["values"])
        steps = np.abs(np.diff(np.asarray(m["identity_per_seed"]), axis=1)) / np.diff(values)
        rates = steps / (np.abs(np.diff(np.asarray(m["identity_per_seed"]), axis=1)).sum(1, keepdims=True)
                         / (values[-1] - values[0]) + 1e-12)
        x = np.arange(len(values) - 1) + (k - 0.5) * width
        ax.bar(x, rates.mean(0), width, yerr=rates.std(0), capsize=3, color=colour,
               label=f"{method} (largest/mean, seed mean curve: {m['mean_curve']['jump_identity']:.2f})")
    ax.axhline(2.0, color="red", linestyle=":", label="target: at most 2")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    first = summary[FLEXIP]["values"]
    ax.set_xticks(range(len(first) - 1), [f"{a:g}-{b:g}" for a, b in zip(first, first[1:])])
    ax.set_xlabel("neighbouring control values")
    ax.set_ylabel("|identity step| / mean step")
    ax.set_title("smoothness of the identity score along the sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(results, cases, path, shown=6, scale=3):
    """Per case (seed 0): the reference, FlexIP's gamma sweep, the baseline's strength sweep, the base."""
    renderer = world.Renderer()
    cell = world.SIZE * scale
    label_h = 14
    methods = [m for m in (FLEXIP, BASELINE) if m in results]
    columns = 2 + len(results[FLEXIP]["values"])
    rows = shown * len(methods)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + label_h) + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 1), "reference | sweep from control 0 (left) to 1 (right) | base model alone", fill="black")

    def paste(pixels, col, row):
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
        sheet.paste(image, (col * cell, label_h + row * (cell + label_h) + label_h))

    for i, case in enumerate(cases[:shown]):
        reference = renderer.render([case.subject], [case.reference_scene])[0]
        for j, method in enumerate(methods):
            row = i * len(methods) + j
            r = results[method]
            control = "gamma" if method == FLEXIP else "strength"
            top = label_h + row * (cell + label_h)
            draw.text((4, top + 1), f"{method} ({control} {', '.join(f'{v:g}' for v in r['values'])}): "
                                    f"'{case.prompt}'", fill="black")
            if j == 0:
                paste((reference.numpy() * 255).round(), 0, row)
            for k in range(len(r["values"])):
                paste(r["pictures"][0, k, i], 1 + k, row)
            paste(results["base"]["pictures"][0, 0, i], columns - 1, row)
    sheet.save(path)


def gamma_sweep_sheet(results, cases, path, shown=6, scale=4):
    """The demo's picture: per held-out case (seed 0), the reference and FlexIP's gamma sweep."""
    renderer = world.Renderer()
    cell, label_h = world.SIZE * scale, 16
    values = results[FLEXIP]["values"]
    sheet = Image.new("RGB", ((1 + len(values)) * cell, 2 * label_h + shown * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), "FlexIP-nano (trained on the CPU on a toy world; subjects never seen in training): "
                      "gamma 0 follows the prompt, gamma 1 keeps the reference", fill="black")
    draw.text((4, label_h + 1), "reference   " + "   ".join(f"gamma {v:g}" for v in values), fill=(90, 90, 90))
    for i, case in enumerate(cases[:shown]):
        top = 2 * label_h + i * (cell + label_h)
        draw.text((4, top + 1), f"prompt: '{case.prompt}'", fill="black")
        reference = renderer.render([case.subject], [case.reference_scene])[0]
        tiles = [(reference.numpy() * 255).round()] + [results[FLEXIP]["pictures"][0, k, i] for k in range(len(values))]
        for col, pixels in enumerate(tiles):
            image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
            sheet.paste(image, (col * cell, top + label_h))
    sheet.save(path)


# --- The report --------------------------------------------------------------------------------

def write_report(folder, size, cases, results, facts, cache):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    seconds = facts.get("stage_seconds", {})
    minutes = sum(seconds.values()) / 60 if seconds else None
    summary["targets"] = targets(summary, minutes)
    summary["mrank"] = ranks(summary)
    summary["facts"] = facts
    plot_controls(summary, folder / "controls.png")
    plot_front(summary, folder / "front.png")
    plot_smoothness(summary, folder / "smoothness.png")
    plot_attributes(summary, folder / "attributes.png")
    contact_sheet(results, cases, folder / "contact_sheet.png")
    gamma_sweep_sheet(results, cases, folder / "gamma_sweep.png")
    for name in ("flexip", "baseline"):
        metrics = Path(cache) / name / "metrics.png"
        if metrics.exists():
            shutil.copyfile(metrics, folder / f"training_{name}.png")
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


def markdown(summary, size, cases, facts, seconds, minutes):
    lines = [f"# FlexIP in miniature: report ({size.name} run)", ""]
    lines += ["Held-out subjects only: "
              f"{len({c.subject for c in cases})} subjects never seen in training, {len(cases)} cases "
              f"(reference in one scene, prompt asking for a scene different in background, position and size), "
              f"sampling seeds {list(size.seeds)}, ComfyUI's KSampler ({size.sampling.steps} euler steps, CFG "
              f"{size.sampling.cfg}). Identity score: fraction of the subject's 4 attributes decoded from the "
              "generated picture; prompt score: fraction of the prompt's 3 scene attributes (exact evaluators of "
              "the world, see benchmarks/nano/evaluate.py).", ""]
    lines += ["## Targets", "", "| target | values | met |", "|---|---|---|"]
    for row in summary["targets"].values():
        values = ", ".join(_f(v) for v in row["values"])
        lines.append(f"| {row['target']} | {values} | {'yes' if row['met'] else '**no**'} |")
    lines += ["", "Values: per seed for the Spearman and jump rows; (FlexIP, base model) for the gamma-end rows; "
              "(FlexIP, baseline) for the front; minutes for the time (the stages' build times, measured on a "
              "shared 2-core machine where other work was running, so pessimistic).", ""]
    lines += ["## Sweeps (mean over cases and seeds)", ""]
    for method in (FLEXIP, BASELINE):
        if method not in summary:
            continue
        m = summary[method]
        control = "gamma" if method == FLEXIP else "strength"
        lines += [f"**{method}** ({control})", "", "| " + control + " | " + " | ".join(f"{v:g}" for v in m["values"]) + " |",
                  "|---" * (len(m["values"]) + 1) + "|",
                  "| identity | " + " | ".join(_f(v) for v in m["identity"]) + " |",
                  "| prompt | " + " | ".join(_f(v) for v in m["prompt"]) + " |", ""]
    base = summary["base"]
    lines += [f"**Base model alone**: identity {_f(base['identity'])}, prompt {_f(base['prompt'])}.", ""]
    lines += ["Per attribute (fraction of pictures; the subject's attributes kept, the scene's as the prompt "
              "asks and as the reference shows):", "",
              "| method | score | attribute | " + " | ".join(f"{v:g}" for v in summary[FLEXIP]["values"]) + " |",
              "|---" * (3 + len(summary[FLEXIP]["values"])) + "|"]
    for method in ("base", FLEXIP, BASELINE):
        if method not in summary:
            continue
        for score, (what, names) in ATTRIBUTE_SCORES.items():
            for name in names:
                curve = summary[method]["attributes"][score][name]
                lines.append(f"| {method} | {what} | {name} | " + " | ".join(_f(v, 2) for v in curve) + " |")
    lines.append("")
    lines += ["## Smoothness (flexip_core.smoothness)", "",
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
    if summary["mrank"]:
        lines += ["", "mRank (flexip_core.metrics.mrank) of the two controls over front area, Spearman of identity, "
                  "minus Spearman of prompt and minus the identity jump (1 = best): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in summary["mrank"].items()) + "."]
    lines += ["", "## Plots", "", "![scores against the control](controls.png)", "", "![front](front.png)", "",
              "![smoothness](smoothness.png)", "",
              "![attributes](attributes.png)", "", "![contact sheet](contact_sheet.png)", ""]
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
    lines.append(f"- This invocation took {facts['wall_time'] / 60:.1f} min (cached stages are not rebuilt).")
    return "\n".join(lines) + "\n"
