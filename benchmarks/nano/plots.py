"""The miniature's plots: the scores against the control, the front, smoothness, the attributes,
and the contact sheets."""
import numpy as np
from PIL import Image, ImageDraw

from . import scoring, world
from .summary import AXES, BASELINE, FLEXIP, LABELS


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def controls(summary, path, axes=AXES, title=None):
    """Identity, prompt and layout copying (or other axes) against the control, with one standard
    error over cases."""
    plt = pyplot()
    fig, panels = plt.subplots(1, len(axes), figsize=(5 * len(axes), 4))
    for ax, axis in zip(panels, axes):
        for method, label, colour in ((FLEXIP, "FlexIP: gamma", "C0"), (BASELINE, f"{BASELINE}: strength", "C1")):
            if method in summary:
                m = summary[method]
                ax.errorbar(m["values"], m[axis], yerr=m[f"{axis}_se"], marker="o", capsize=3, label=label, color=colour)
                for curve in m[f"{axis}_per_seed"]:
                    ax.plot(m["values"], curve, color=colour, alpha=0.25, linewidth=0.8)
        ax.axhline(summary["base"][axis][0], color="grey", linestyle="--", label="base model alone")
        ax.set_xlabel("control (gamma for FlexIP, strength for the baseline)")
        ax.set_ylabel(LABELS[axis])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{LABELS[axis]} (bars: 1 s.e.; faint: per seed)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def front(summary, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for method, colour, control in ((FLEXIP, "C0", "gamma"), (BASELINE, "C1", "strength")):
        if method in summary:
            m = summary[method]
            ax.errorbar(m["prompt"], m["identity"], xerr=m["prompt_se"], yerr=m["identity_se"], marker="o",
                        color=colour, capsize=2, label=f"{method} (front area {m['mean_curve']['front_area']:.3f})")
            for v, x, y in zip(m["values"], m["prompt"], m["identity"]):
                ax.annotate(f"{control[0]}={v:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot(summary["base"]["prompt"], summary["base"]["identity"], "s", color="grey", label="base model alone")
    ax.set_xlabel("prompt score")
    ax.set_ylabel("identity score")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("identity against prompt (bars: 1 s.e.)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attributes(summary, path):
    """Each attribute along each sweep: as the case asks (the subject's and the prompt's), and the
    reference's layout copied."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("agree", world.SUBJECT_ATTRIBUTES, "subject attributes kept"),
              ("agree", world.SCENE_ATTRIBUTES, "scene attributes as prompted"),
              ("copied", scoring.LAYOUT, "layout as in the reference"))
    for ax, (kind, names, title) in zip(axes, panels):
        for k, name in enumerate(names):
            for method, style in ((FLEXIP, "-"), (BASELINE, "--")):
                if method in summary:
                    ax.plot(summary[method]["values"], summary[method]["attributes"][kind][name], style, marker="o",
                            color=f"C{k}", label=f"{name} ({method})")
            ax.axhline(summary["base"]["attributes"][kind][name][0], color=f"C{k}", linestyle=":", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("control (dotted: base model alone)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def smoothness(summary, path):
    """Each neighbouring step's share of the identity change, in units of the mean step."""
    plt = pyplot()
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


def gamma_sweep_sheet(results, cases, path, shown=6, scale=4, heading=None):
    """The demo's picture: per held-out case (seed 0), the reference and FlexIP's gamma sweep."""
    renderer = world.Renderer()
    cell, label_h = world.SIZE * scale, 16
    values = results[FLEXIP]["values"]
    sheet = Image.new("RGB", ((1 + len(values)) * cell, 2 * label_h + shown * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), heading or "FlexIP-nano (trained on the CPU on a toy world; subjects never seen in training): "
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


