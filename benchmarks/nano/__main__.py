"""python -m benchmarks.nano [--size full|ci] [--variant NAME ...] [--cache DIR] [--report DIR] [--rebuild]

Builds the miniature from nothing (or from its cache) and writes the report:
data, encoders, base -> FlexIP-nano (one per training variant), baseline -> evaluation,
drawability -> report, and an ablation table over every variant reported in the cache.
Each stage is cached under the cache folder (default .host/nano/<size>) with a stamp of its
settings, its code (every repository module it imports, found
by reading their import statements) and the stamps of
the stages it is built from; a stage whose stamp differs is rebuilt, and so is everything built
from it. Variants share the data, encoders and base, and the baseline where their references agree.
"""
import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from .evaluate import Sampling
from .pipeline import build, drawability, evaluate, log
from .stages import REPO
from .train import Budget
from .variants import VARIANTS

# The variant built when none is named, chosen by measurement (benchmarks/README.md, issue 15, round 5c): it
# met the most of the method's targets. Here, not in train.py, so that choosing it changes no stage's code.
DEFAULT_VARIANT = "subject-recolour-s"
# The slider map FlexIP is swept through (flexip_core.slider): "paper" (blend weight = gamma) or
# "calibrated" (gamma^k, k fitted on training subjects: calibrate.py). The default by round 3's rule, fixed
# before its results (benchmarks/README.md): it met more of the method's targets on the scene cases.
SLIDERS = ("paper", "calibrated")
DEFAULT_SLIDER = "calibrated"


def report_name(variant, slider):
    """A run's report folder under <report>: the variant's name, with -calibrated for the calibrated slider."""
    return variant + ("-calibrated" if slider == "calibrated" else "")


DEFAULT_REPORT = report_name(DEFAULT_VARIANT, DEFAULT_SLIDER)


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    views_per_subject: int      # scenes each training subject is drawn in
    pairs_per_view: int         # multi-view pairs per view
    encoder_steps: int          # the stand-in encoders train beside the base, so up to its length costs no wall time
    encoder_subjects: int       # subjects per contrastive step (two views each)
    base_steps: int
    base_batch: int
    adapters: Budget            # FlexIP's and the baseline's, the same
    baseline: bool
    eval_subjects: int          # held-out subjects evaluated (of world.HELD_OUT)
    cases_per_subject: int
    seeds: tuple                # sampling seeds: one sweep per case and seed
    gammas: tuple               # FlexIP's control values; the baseline's strengths are the same numbers
    sampling: Sampling
    recolour: bool              # also sweep the recolour cases (recolour.py: prompts that contradict the reference)
    calibration_subjects: int   # training subjects the calibrated slider is fitted on (calibrate.py)


SIZES = {
    "full": Size("full", views_per_subject=6, pairs_per_view=2, encoder_steps=400, encoder_subjects=64,
                 base_steps=3000, base_batch=32, adapters=Budget(steps=2000, batch=32), baseline=True,
                 eval_subjects=48, cases_per_subject=1, seeds=(0, 1, 2), gammas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                 sampling=Sampling(steps=15, cfg=3.0), recolour=True, calibration_subjects=48),
    "ci": Size("ci", views_per_subject=4, pairs_per_view=2, encoder_steps=100, encoder_subjects=64,
               base_steps=900, base_batch=16, adapters=Budget(steps=500, batch=16), baseline=False,
               eval_subjects=24, cases_per_subject=1, seeds=(0, 1), gammas=(0.0, 1 / 3, 2 / 3, 1.0),
               sampling=Sampling(steps=10, cfg=3.0), recolour=False, calibration_subjects=8),
}


def sized(name, subject_weight=None, encoder_steps=None, adapter_steps=None):
    """SIZES[name] with the command line's overrides (None: the size's own)."""
    size = SIZES[name]
    if adapter_steps is not None:
        size = dataclasses.replace(size, adapters=dataclasses.replace(size.adapters, steps=adapter_steps))
    if subject_weight is not None:
        size = dataclasses.replace(size, adapters=dataclasses.replace(size.adapters, subject_weight=subject_weight))
    if encoder_steps is not None:
        size = dataclasses.replace(size, encoder_steps=encoder_steps)
    return size


def run_variant(size, cache, variant, report_dir, rebuild, progress, second_lane=None, slider="paper"):
    """Builds the variant and writes its report. second_lane: the command line of --jobs 2's second
    process (pipeline.build()), started once this one holds the base; a failure there fails the run. slider: FlexIP's
    slider map (evaluate())."""
    from . import report
    start = time.time()
    second = []
    try:
        base, flexip, baseline, stages, facts = build(
            size, cache, variant, rebuild, progress,
            base_held=(lambda: second.append(subprocess.Popen(second_lane))) if second_lane else None)
        cases, results, recolour = evaluate(size, variant, base, flexip, baseline, stages, facts, progress,
                                            slider=slider)
        drawable = drawability(size, base, cases, stages)
        if slider == "calibrated":  # the report's and the ablation's name for it
            recipe = facts["variant"]
            facts["variant"] = {**recipe, "name": f"{recipe['name']}-calibrated", "description": (
                f"{recipe['description'] or recipe['name']}; with the calibrated slider, blend weight = "
                f"gamma^{facts['slider']['exponent']:g} (calibrate.py)")}
    except BaseException:
        for process in second:
            process.kill()
        raise
    for process in second:
        if process.wait() != 0:
            raise RuntimeError(f"nano: the second lane failed (exit code {process.returncode}): {' '.join(second_lane)}")
    log("drawability: the base's reconstruction accuracy per attribute: "
        + ", ".join(f"{a} {v:.0%}" for a, v in drawable.items()))
    facts["wall_time"] = time.time() - start
    # the build of this variant from nothing: the shared stages and its own
    built = ("data", "encoders", "base", *facts["stages"], "drawability")
    facts["stage_seconds"] = {name: stages.seconds(name) for name in built}
    facts["stage_cpu_seconds"] = {name: stages.seconds(name, "cpu_seconds") for name in built}
    facts["jobs"] = 2 if second_lane else 1
    summary = report.write_report(report_dir, size, cases, results, facts, stages.root, drawable, recolour)
    log(f"report: {report_dir / 'report.md'}")
    return summary


def second_lane(size, cache, variant, slider="paper"):
    """--jobs 2's second process (pipeline.build()): the encoders, the baseline and the recolour sweeps (and, for the
    calibrated slider, the recolour cases' calibration). Without progress bars, which would write over the
    first lane's; its log lines say what it builds."""
    built = build(size, cache, variant, progress=False, in_second_lane=True)
    if built is not None and size.recolour:
        evaluate(size, variant, *built, progress=False, in_second_lane=True, slider=slider)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nano", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="full: the benchmark (40 to 60 min "
                        "on 2 CPU cores); ci: the CI-sized run (no baseline)")
    parser.add_argument("--variant", nargs="+", choices=[*VARIANTS, "all"], default=[DEFAULT_VARIANT],
                        help=f"training variants to build and report (default: {DEFAULT_VARIANT}, chosen by "
                        "measurement; see benchmarks/README.md): " + "; ".join(
                            f"{v.name}: {v.description}" for v in VARIANTS.values()))
    parser.add_argument("--cache", help="cache folder (default: .host/nano/<size>)")
    parser.add_argument("--report", help="report folder (default: <cache>/report); each variant's report goes "
                        "into <report>/<variant>, the ablation table over all of them into <report>/ablation.md")
    parser.add_argument("--rebuild", action="store_true", help="rebuild every stage, ignoring the cache")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: these models are small, and on a busy machine one thread runs several times faster than two that wait for each other)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=2, help="processes (default 2: a second "
                        "process, one torch thread each, builds the encoders beside the base, the baseline beside "
                        "FlexIP and the recolour sweeps beside the scene sweeps; 1: one after the other)")
    parser.add_argument("--slider", choices=SLIDERS, default=DEFAULT_SLIDER, help="FlexIP's slider map (flexip_core."
                        "slider): paper, blend weight = gamma; calibrated, gamma^k with k fitted after training on "
                        "training subjects (benchmarks/nano/calibrate.py); its reports go to <report>/<variant>-"
                        f"calibrated (default: {DEFAULT_SLIDER})")
    parser.add_argument("--second-lane", action="store_true", help="be that second process (--jobs 2 starts it)")
    parser.add_argument("--subject-weight", type=float, help="the adapters' loss weight of the subject's pixels "
                        "against the background's 1 (default: the size's, "
                        f"{SIZES['full'].adapters.subject_weight:g}; 1: unweighted); FlexIP and the baseline alike")
    parser.add_argument("--encoder-steps", type=int, help="the stand-in encoders' training steps (default: the "
                        f"size's, {SIZES['full'].encoder_steps} at full size; issue 15's round 7 used 3200, after "
                        "which the DINOv2 stand-in knows the pattern, benchmarks/README.md); give such a run its own "
                        "--cache, as every stage after the encoders is rebuilt")
    parser.add_argument("--adapter-steps", type=int, help="FlexIP's and the baseline's training steps, alike "
                        f"(default: the size's, {SIZES['full'].adapters.steps} at full size); give such a run its own "
                        "--cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = sized(args.size, args.subject_weight, args.encoder_steps, args.adapter_steps)
    cache = Path(args.cache) if args.cache else REPO / ".host" / "nano" / size.name
    report_dir = Path(args.report) if args.report else cache / "report"
    names = list(VARIANTS) if "all" in args.variant else list(dict.fromkeys(args.variant))
    from . import ablation
    from .base import import_comfy
    import_comfy()
    sys.path.insert(0, str(REPO))
    if args.second_lane:
        for name in names:
            second_lane(size, cache, VARIANTS[name], args.slider)
        return {}

    def second_lane_command(name):  # the same run's second lane
        if args.jobs == 1 or args.rebuild:  # --rebuild: one process, which rebuilds each stage once
            return None
        return [sys.executable, "-m", "benchmarks.nano", "--size", args.size, "--variant", name, "--cache", str(cache),
                "--threads", str(args.threads), "--slider", args.slider, "--second-lane",
                *(["--subject-weight", str(args.subject_weight)] if args.subject_weight is not None else []),
                *(["--encoder-steps", str(args.encoder_steps)] if args.encoder_steps is not None else []),
                *(["--adapter-steps", str(args.adapter_steps)] if args.adapter_steps is not None else [])]

    summaries = {report_name(name, args.slider): run_variant(
        size, cache, VARIANTS[name], report_dir / report_name(name, args.slider), args.rebuild, not args.no_progress,
        second_lane_command(name), args.slider) for name in names}
    ablation.write_ablation(report_dir)
    log(f"ablation: {report_dir / 'ablation.md'}")
    for name, summary in summaries.items():
        print(json.dumps({name: summary["targets"]}, indent=1))
    return summaries


if __name__ == "__main__":
    main()
