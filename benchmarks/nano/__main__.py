"""python -m benchmarks.nano [--size full|ci] [--cache DIR] [--report DIR] [--rebuild] [--subject-weight W]

Builds the miniature from nothing (or from its cache) and writes the report:
data, encoders, base -> FlexIP-nano, baseline -> evaluation -> report.
Each stage is cached under the cache folder (default .host/nano/<size>) with a stamp of its
settings, its code and the stamps of the stages it is built from; a stage whose stamp differs is
rebuilt, and so is everything built from it.
"""
import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .evaluate import Sampling
from .train import Budget

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    views_per_subject: int      # scenes each training subject is drawn in
    pairs_per_view: int         # multi-view pairs per view
    encoder_steps: int
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


SIZES = {
    "full": Size("full", views_per_subject=6, pairs_per_view=2, encoder_steps=400, encoder_subjects=64,
                 base_steps=3000, base_batch=32, adapters=Budget(steps=2000, batch=32), baseline=True,
                 eval_subjects=48, cases_per_subject=1, seeds=(0, 1, 2), gammas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                 sampling=Sampling(steps=15, cfg=3.0)),
    "ci": Size("ci", views_per_subject=4, pairs_per_view=2, encoder_steps=100, encoder_subjects=64,
               base_steps=900, base_batch=16, adapters=Budget(steps=500, batch=16), baseline=False,
               eval_subjects=24, cases_per_subject=1, seeds=(0, 1), gammas=(0.0, 1 / 3, 2 / 3, 1.0),
               sampling=Sampling(steps=10, cfg=3.0)),
}


def code_hash(*modules):
    digest = hashlib.sha256()
    for module in modules:
        digest.update((HERE / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]


class Stages:
    """Cached stages. current(name, settings, modules, after) says whether a stage's cached output
    is current (its settings, its code and the stamps of the stages it is built from unchanged),
    clearing it if not; done() stamps it with the time it took, which the report shows for cached
    stages too."""

    def __init__(self, root, rebuild):
        self.root, self.rebuild = Path(root), rebuild
        self.stamps, self.pending = {}, None

    def folder(self, name):
        return self.root / name

    def current(self, name, settings, modules, after=()):
        stamp = {"settings": settings, "code": code_hash(*modules),
                 "after": {a: hashlib.sha256(json.dumps(self.stamps[a], sort_keys=True).encode()).hexdigest()[:16]
                           for a in after}}
        self.stamps[name] = stamp
        folder, path = self.folder(name), self.folder(name) / "stamp.json"
        if not self.rebuild and path.exists() and json.loads(path.read_text())["stamp"] == stamp:
            return True
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.pending = (path, stamp, time.time())
        return False

    def done(self):
        path, stamp, start = self.pending
        path.write_text(json.dumps({"stamp": stamp, "seconds": time.time() - start}, indent=1, sort_keys=True))

    def seconds(self, name):
        return json.loads((self.folder(name) / "stamp.json").read_text())["seconds"]


def log(message):
    print(f"[nano] {message}", flush=True)


def build(size, cache, rebuild=False, progress=True):
    """Every stage, cached; -> (base, flexip, baseline or None, facts for the report)."""
    from flexip_core.config import register_config

    from . import base as nano_base
    from . import data
    from . import encoders as nano_encoders
    from .baseline import BASELINE_GATE
    from .train import FLEXIP_GATE, nano_config, train_adapters

    stages = Stages(cache, rebuild)
    facts = {"size": dataclasses.asdict(size)}
    folder = stages.folder("data")
    if not stages.current("data", [size.views_per_subject, size.pairs_per_view], ["world", "data"]):
        log("data: rendering the training pictures")
        data.write_training_data(folder, size.views_per_subject, size.pairs_per_view, progress=progress)
        stages.done()
    manifests = [folder / "images.jsonl", folder / "multiview.jsonl"]

    path = stages.folder("encoders") / "encoders.safetensors"
    if not stages.current("encoders", [size.encoder_steps, size.encoder_subjects], ["world", "encoders"]):
        trained = nano_encoders.train_encoders(size.encoder_steps, size.encoder_subjects, progress=progress)
        nano_encoders.save_encoders(trained, path)
        stages.done()
    encoders = nano_encoders.load_encoders(path)
    facts["encoder_knowledge"] = nano_encoders.attribute_knowledge(encoders)
    for name, known in facts["encoder_knowledge"].items():
        log(f"encoders: {name} stand-in, nearest-neighbour attribute accuracy (held-out subjects): "
            + ", ".join(f"{a} {v:.0%}" for a, v in known.items()))

    path = stages.folder("base") / "base.safetensors"
    if not stages.current("base", [size.base_steps, size.base_batch], ["world", "base"]):
        weights = nano_base.train_base(size.base_steps, size.base_batch, progress=progress)
        nano_base.save_base(weights, path)
        stages.done()
    patcher, text = nano_base.load_base(path)
    config = nano_config(patcher.model.diffusion_model)
    register_config(config)  # the pack's weight loader then accepts the files the Trainer exports for it
    base = nano_base.nano_base(patcher, text, encoders, config)

    from flexip_core.weights import load_flexip, read_flexip_header
    trained = {}
    runs = [("flexip", FLEXIP_GATE, ["train"])]
    if size.baseline:
        runs.append(("baseline", BASELINE_GATE, ["train", "baseline"]))
    for name, gate, modules in runs:
        folder = stages.folder(name)
        if not stages.current(name, [dataclasses.asdict(size.adapters), gate], modules, ["data", "encoders", "base"]):
            log(f"{name}: training with flexip_train's Trainer")
            train_adapters(base, config, manifests, folder, size.adapters, gate, export_name=name, progress=progress)
            stages.done()
        trained[name] = load_flexip(folder / f"{name}.safetensors")
        facts[f"{name}_training"] = json.loads(read_flexip_header(folder / f"{name}.safetensors")[1]["training"])
    return base, trained.get("flexip"), trained.get("baseline"), stages, facts


def evaluate(size, base, flexip, baseline, stages, facts, progress=True):
    """The sweeps, cached as results.npz beside their stamp."""
    from . import world
    from .baseline import baseline_method
    from .evaluate import flexip_method, run_sweeps

    _, held_out = world.split()
    cases = world.evaluation_cases(held_out[:size.eval_subjects], size.cases_per_subject)
    path = stages.folder("evaluation") / "results.npz"
    settings = [size.eval_subjects, size.cases_per_subject, list(size.seeds), list(size.gammas),
                dataclasses.asdict(size.sampling)]
    after = ["base", "encoders", "flexip"] + (["baseline"] if baseline is not None else [])
    if not stages.current("evaluation", settings, ["world", "evaluate", "baseline"], after):
        methods = [flexip_method(flexip, size.gammas)]
        if baseline is not None:
            methods.append(baseline_method(baseline, size.gammas))
        results = run_sweeps(base, methods, cases, size.seeds, size.sampling, progress=progress)
        np.savez_compressed(path, **{f"{m}/{k}": np.asarray(v) for m, r in results.items() for k, v in r.items()})
        stages.done()
    loaded = np.load(path)
    results = {}
    for key in loaded.files:
        method, name = key.split("/")
        results.setdefault(method, {})[name] = loaded[key]
    return cases, results


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nano", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="full: the benchmark (about 45 min "
                        "on 2 CPU cores); ci: the CI-sized run (no baseline)")
    parser.add_argument("--cache", help="cache folder (default: .host/nano/<size>)")
    parser.add_argument("--report", help="report folder (default: <cache>/report)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild every stage, ignoring the cache")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: these models are small, and on a busy machine one thread runs several times faster than two that wait for each other)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--subject-weight", type=float, help="the adapters' loss weight of the subject's pixels "
                        "against the background's 1 (default: the size's, "
                        f"{SIZES['full'].adapters.subject_weight:g}; 1: unweighted); FlexIP and the baseline alike")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    if args.subject_weight is not None:
        adapters = dataclasses.replace(size.adapters, subject_weight=args.subject_weight)
        size = dataclasses.replace(size, adapters=adapters)
    cache = Path(args.cache) if args.cache else REPO / ".host" / "nano" / size.name
    report_dir = Path(args.report) if args.report else cache / "report"
    progress = not args.no_progress
    from . import report
    from .base import import_comfy
    import_comfy()
    sys.path.insert(0, str(REPO))
    start = time.time()
    base, flexip, baseline, stages, facts = build(size, cache, args.rebuild, progress)
    cases, results = evaluate(size, base, flexip, baseline, stages, facts, progress)
    drawable = drawability(size, base, cases, stages)
    log("drawability: the base's reconstruction accuracy per attribute: "
        + ", ".join(f"{a} {v:.0%}" for a, v in drawable.items()))
    facts["wall_time"] = time.time() - start
    facts["stage_seconds"] = {name: stages.seconds(name) for name in
                              ("data", "encoders", "base", "flexip", "baseline", "evaluation", "drawability")
                              if (stages.folder(name) / "stamp.json").exists()}
    summary = report.write_report(report_dir, size, cases, results, facts, cache, drawable)
    log(f"report: {report_dir / 'report.md'}")
    print(json.dumps(summary["targets"], indent=1))
    return summary


if __name__ == "__main__":
    main()
