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

import numpy as np
import torch

from .evaluate import Sampling
from .stages import REPO, Stages
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


def sized(name, subject_weight=None, encoder_steps=None):
    """SIZES[name] with the command line's overrides (None: the size's own)."""
    size = SIZES[name]
    if subject_weight is not None:
        size = dataclasses.replace(size, adapters=dataclasses.replace(size.adapters, subject_weight=subject_weight))
    if encoder_steps is not None:
        size = dataclasses.replace(size, encoder_steps=encoder_steps)
    return size


def log(message):
    print(f"[nano] {message}", flush=True)


def build(size, cache, variant, rebuild=False, progress=True, base_held=None, in_second_lane=False):
    """Every stage the variant needs, cached; -> (base, flexip, baseline or None, stages, facts).
    base_held: called once this process holds the base (built or cached), which is when --jobs 2 starts
    its second lane: the encoders then build beside the base and the baseline trains beside FlexIP, on
    one core each (the recolour sweeps then go beside the scene sweeps: evaluate()). in_second_lane: this
    is that lane's process; it meets the stages in the other order (the encoders first, the baseline
    before FlexIP) and returns None where it has nothing to add. A stage's lock makes either process
    wait while the other builds it, so that in any order each stage is built once and both read it."""
    from . import base as nano_base
    from . import data
    from . import encoders as nano_encoders

    stages = Stages(cache, rebuild)
    facts = {"size": dataclasses.asdict(size), "variant": dataclasses.asdict(variant)}
    encoders_path = stages.folder("encoders") / "encoders.safetensors"
    base_path = stages.folder("base") / "base.safetensors"

    def build_encoders():
        if not stages.current("encoders", [size.encoder_steps, size.encoder_subjects], ["world", "encoders"]):
            trained = nano_encoders.train_encoders(size.encoder_steps, size.encoder_subjects, progress=progress)
            nano_encoders.save_encoders(trained, encoders_path)
            stages.done()

    if in_second_lane:
        build_encoders()
        if not (size.baseline or size.recolour):
            return None
    if not stages.current("data", [size.views_per_subject, size.pairs_per_view], ["world", "data"]):
        log("data: rendering the training pictures")
        data.write_training_data(stages.folder("data"), size.views_per_subject, size.pairs_per_view, progress=progress)
        stages.done()
    cached = stages.current("base", [size.base_steps, size.base_batch], ["world", "base"])
    if base_held is not None:
        base_held()
    if not cached:
        nano_base.save_base(nano_base.train_base(size.base_steps, size.base_batch, progress=progress), base_path)
        stages.done()
    build_encoders()
    return trained_adapters(size, variant, stages, facts, base_path, encoders_path, progress, in_second_lane)


def trained_adapters(size, variant, stages, facts, base_path, encoders_path, progress, in_second_lane):
    """The base model with the encoders, and FlexIP and (where the size has one) its baseline, each
    trained or read from the cache: -> (base, flexip, baseline or None, stages, facts)."""
    from flexip_core.config import register_config
    from flexip_core.weights import load_flexip, read_flexip_header

    from . import base as nano_base
    from . import data
    from . import encoders as nano_encoders
    from .baseline import BASELINE_GATE
    from .train import Variant, nano_config, train_adapters

    encoders = nano_encoders.load_encoders(encoders_path)
    if not in_second_lane:  # the report's table; the second lane writes no report
        facts["encoder_knowledge"] = nano_encoders.attribute_knowledge(encoders)
        for name, known in facts["encoder_knowledge"].items():
            log(f"encoders: {name} stand-in, nearest-neighbour attribute accuracy (held-out subjects): "
                + ", ".join(f"{a} {v:.0%}" for a, v in known.items()))
    patcher, text = nano_base.load_base(base_path)
    config = nano_config(patcher.model.diffusion_model)
    register_config(config)  # the pack's weight loader then accepts the files the Trainer exports for it
    base = nano_base.nano_base(patcher, text, encoders, config)

    # The baseline is IP-Adapter's recipe (own captions, its gate fixed) with the variant's references.
    runs = [(f"flexip-{variant.name}", "flexip", variant, ["train", "data"])]
    if size.baseline:
        runs.append((f"baseline-{variant.references}", "baseline",
                     Variant(f"baseline-{variant.references}", BASELINE_GATE, references=variant.references),
                     ["train", "data", "baseline"]))
    trained = {}
    for stage, role, recipe, modules in (runs[::-1] if in_second_lane else runs):
        folder = stages.folder(stage)
        if not stages.current(stage, [dataclasses.asdict(size.adapters), dataclasses.asdict(recipe)], modules,
                              ["data", "encoders", "base"]):
            log(f"{stage}: training with flexip_train's Trainer ({recipe.description or recipe.name})")
            manifests = data.variant_manifests(stages.folder("data"), recipe, folder / "manifests")
            train_adapters(base, config, manifests, folder, size.adapters, recipe, export_name=role, progress=progress)
            stages.done()
        trained[role] = load_flexip(folder / f"{role}.safetensors")
        facts[f"{role}_training"] = json.loads(read_flexip_header(folder / f"{role}.safetensors")[1]["training"])
    facts["stages"] = [stage for stage, *_ in runs]
    return base, trained.get("flexip"), trained.get("baseline"), stages, facts


def evaluate(size, variant, base, flexip, baseline, stages, facts, progress=True, in_second_lane=False,
             slider="paper"):
    """The sweeps of the scene cases and, where the size has them, of the recolour cases (recolour.py):
    -> (cases, results, recolour (cases, results) or None). in_second_lane: the recolour sweeps only, beside
    the first lane's scene sweeps (build()). slider "calibrated": FlexIP through the calibrated slider
    (slider_map()), in stages of their own."""
    from . import world
    from .recolour import recolour_cases

    _, held_out = world.split()
    cases = world.evaluation_cases(held_out[:size.eval_subjects], size.cases_per_subject)
    adapters = list(facts["stages"])
    exponent, suffix, extra = 1.0, "", []
    if slider == "calibrated":
        exponent = slider_map(size, variant, base, flexip, stages, facts, progress, in_second_lane)
        suffix, extra, adapters = "-calibrated", ["calibrate"], adapters + [f"slider-{variant.name}"]
    results = None
    if not in_second_lane:
        results = sweeps(f"evaluation-{variant.name}{suffix}", cases, ["world", "evaluate", "baseline", *extra],
                         adapters, size, variant, base, flexip, baseline, stages, facts, progress, exponent)
    recolour = None
    if size.recolour:
        edited = recolour_cases(cases)
        recolour = edited, sweeps(f"recolour-{variant.name}{suffix}", edited,
                                  ["world", "evaluate", "baseline", "recolour", *extra], adapters, size, variant, base,
                                  flexip, baseline, stages, facts, progress, exponent)
    return cases, results, recolour


def slider_map(size, variant, base, flexip, stages, facts, progress, in_second_lane):
    """The calibrated slider's exponent (calibrate.py): the calibration sweep of each case set (the second lane
    takes the recolour set first, so the two build side by side), then the fit, which writes FlexIP's weight
    file with the exponent in its metadata. The exponent is read back from that file as the loader node
    reads it."""
    from flexip_core.slider import save_with_slider_exponent, slider_exponent
    from flexip_core.weights import read_flexip_header

    from . import calibrate

    kinds = ["scene", "recolour"] if size.recolour else ["scene"]
    curves, calibrations = {}, []
    for kind in (kinds[::-1] if in_second_lane else kinds):
        stage = f"calibration-{kind}-{variant.name}"
        calibrations.append(stage)
        path = stages.folder(stage) / "identity.npz"
        settings = [size.calibration_subjects, list(calibrate.BLEND_WEIGHTS), list(calibrate.SEEDS), calibrate.CASE_SEED,
                    calibrate.SUBJECT_STRIDE, dataclasses.asdict(size.sampling), variant.references]
        if not stages.current(stage, settings, ["world", "evaluate", "scoring", "recolour", "calibrate"],
                              [f"flexip-{variant.name}"]):
            log(f"{stage}: FlexIP at fixed blend weights on {size.calibration_subjects} training subjects' {kind} cases")
            mean, per_case = calibrate.identity_curve(
                base, flexip, calibrate.calibration_cases(size.calibration_subjects, kind), variant.references,
                size.sampling, progress)
            np.savez(path, mean=mean, per_case=per_case)
            stages.done()
        curves[kind] = np.load(path)["mean"]
    stage = f"slider-{variant.name}"
    weights = stages.folder(stage) / "flexip.safetensors"
    if not stages.current(stage, [list(calibrate.EXPONENTS), list(size.gammas)], ["calibrate"],
                          [f"flexip-{variant.name}", *sorted(calibrations)]):
        exponent, worst = calibrate.fit_exponent(calibrate.BLEND_WEIGHTS, curves, size.gammas)
        save_with_slider_exponent(stages.folder(f"flexip-{variant.name}") / "flexip.safetensors", weights, exponent)
        (stages.folder(stage) / "calibration.json").write_text(json.dumps(
            {"exponent": exponent, "worst_jump": {str(k): v for k, v in worst.items()},
             "blend_weights": list(calibrate.BLEND_WEIGHTS), "seeds": list(calibrate.SEEDS), "identity": {k: v.tolist() for k, v in curves.items()}},
            indent=1))
        stages.done()
    exponent = slider_exponent(read_flexip_header(weights)[1])
    facts["stages"] += [*calibrations, stage]
    facts["slider"] = {"map": "calibrated", **json.loads((stages.folder(stage) / "calibration.json").read_text())}
    log(f"{stage}: blend weight = gamma^{exponent:g}, written to {weights}")
    return exponent


def sweeps(stage, cases, modules, after, size, variant, base, flexip, baseline, stages, facts, progress, exponent=1.0):
    """FlexIP's (and the baseline's) sweeps over cases, cached as results.npz beside their stamp. exponent:
    FlexIP's slider map (flexip_core.slider); 1 is the paper's."""
    from .baseline import baseline_method
    from .evaluate import flexip_method, run_sweeps

    path = stages.folder(stage) / "results.npz"
    settings = [size.eval_subjects, size.cases_per_subject, list(size.seeds), list(size.gammas),
                dataclasses.asdict(size.sampling), variant.references]
    if exponent != 1.0:
        settings.append(exponent)
    if not stages.current(stage, settings, modules, after):
        if exponent != 1.0:
            from .calibrate import calibrated_method
            methods = [calibrated_method(flexip, size.gammas, variant.references, exponent)]
        else:
            methods = [flexip_method(flexip, size.gammas, variant.references)]
        if baseline is not None:
            methods.append(baseline_method(baseline, size.gammas, variant.references))
        results = run_sweeps(base, methods, cases, size.seeds, size.sampling, progress=progress)
        np.savez_compressed(path, **{f"{m}/{k}": np.asarray(v) for m, r in results.items() for k, v in r.items()})
        stages.done()
    facts["stages"].append(stage)
    loaded = np.load(path)
    results = {}
    for key in loaded.files:
        method, name = key.split("/")
        results.setdefault(method, {})[name] = loaded[key]
    return results


def drawability(size, base, cases, stages):
    """The base model's reconstruction accuracy per attribute (drawability.py), cached."""
    from .drawability import DENOISE, reconstruction_accuracy
    from .scoring import PlacementDecoder

    path = stages.folder("drawability") / "accuracy.json"
    settings = [size.eval_subjects, size.cases_per_subject, list(size.seeds), dataclasses.asdict(size.sampling), DENOISE]
    if not stages.current("drawability", settings, ["world", "evaluate", "scoring", "drawability"], ["base"]):
        accuracy, pictures = reconstruction_accuracy(base, cases, size.seeds, size.sampling, PlacementDecoder())
        path.write_text(json.dumps(accuracy, indent=1))
        np.savez_compressed(path.with_name("reconstructions.npz"), pictures=pictures)
        stages.done()
    return json.loads(path.read_text())


def run_variant(size, cache, variant, report_dir, rebuild, progress, second_lane=None, slider="paper"):
    """Builds the variant and writes its report. second_lane: the command line of --jobs 2's second
    process (build()), started once this one holds the base; a failure there fails the run. slider: FlexIP's
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
    """--jobs 2's second process (build()): the encoders, the baseline and the recolour sweeps (and, for the
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = sized(args.size, args.subject_weight, args.encoder_steps)
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
                *(["--encoder-steps", str(args.encoder_steps)] if args.encoder_steps is not None else [])]

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
