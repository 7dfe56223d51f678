"""The miniature's stages, in build order: data, encoders and base (build()), FlexIP and its baseline
(trained_adapters()), the calibrated slider (slider_map()), the sweeps of the scene and recolour cases
(evaluate(), sweeps()) and the base's drawability. Each is cached by stages.Stages; __main__ runs them and
writes the report."""
import dataclasses
import json

import numpy as np

from .stages import Stages


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
        if not stages.current(stage, [dataclasses.asdict(size.adapters), recipe.settings()], modules,
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
