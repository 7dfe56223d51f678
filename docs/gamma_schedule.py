"""Draws js/docs/gamma_schedule.png (docs/nodes.md and the FlexIP Gamma Schedule help page, which the
frontend serves from js/docs/): what FlexIP Gamma Schedule gives, from flexip_core.schedule itself.

    python docs/gamma_schedule.py
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flexip_core.schedule import BLOCKS, GammaSchedule  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "js" / "docs" / "gamma_schedule.png"


def main():
    t = [i / 200 for i in range(201)]
    fig, (curves, blocks) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for curve, style in (("linear", "--"), ("cosine", "-")):
        schedule = GammaSchedule(1.0, 0.3, curve)
        curves.plot(t, [schedule.gamma(x, "input") for x in t], style, label=f"{curve}")
    curves.set_title("start 1, end 0.3: preserve early, personalize late")
    curves.legend(title="curve")
    schedule = GammaSchedule(0.9, 0.2, "cosine", (1.0, 0.8, 0.5))
    for block, style in zip(BLOCKS, ("-", "-.", ":")):
        blocks.plot(t, [schedule.gamma(x, block) for x in t], style,
                    label=f"{block} x {schedule.blocks[BLOCKS.index(block)]:g}")
    blocks.set_title("start 0.9, end 0.2, cosine; block multipliers")
    blocks.legend(title="block")
    for ax in (curves, blocks):
        ax.set_xlabel("t: fraction of the sampling (0 = first step, 1 = last)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    curves.set_ylabel("gamma  (1 = preserve, 0 = personalize)")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
