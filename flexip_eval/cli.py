"""python -m flexip_eval {run,score} SPEC [options]."""
import argparse
import sys
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from .report import write_report
from .runner import Runner
from .scoring import SCORES, Scorer, read_scores
from .spec import load_spec


def output_folder(spec, out):
    return Path(out) if out else spec.out or spec.path.parent / f"{spec.name}-results"


def score_and_report(spec, out, progress=True):
    """Score every image under out (if the spec configures scoring models), then write the report."""
    if spec.scoring:
        scorer = Scorer(spec.scoring)
        scorer.score(spec, out, progress)
        models, backbones = scorer.models(), scorer.backbones()
    else:
        models, backbones = {}, {}
        print("no [scoring] in the spec: the report has no metrics", file=sys.stderr)
    rows = read_scores(out / SCORES) if (out / SCORES).is_file() and spec.scoring else []
    return write_report(spec, out, rows, models, spec.note, backbones)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m flexip_eval", description=PACKAGE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="generate the images not yet on disk, score them all, write the report")
    score = commands.add_parser("score", help="score the images on disk again and write the report (no generation)")
    for command in (run, score):
        command.add_argument("spec", help="the benchmark spec (TOML or JSON)")
        command.add_argument("--out", help="output folder (default: the spec's [benchmark] out, else <name>-results "
                                           "beside the spec)")
        command.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--server", action="append", help="a ComfyUI server URL (repeat for several; replaces the spec's)")
    run.add_argument("--queue-depth", type=int, help="prompts kept queued on each server (replaces the spec's)")
    run.add_argument("--generate-only", action="store_true", help="stop after generation (score later with `score`)")
    args = parser.parse_args(argv)
    try:
        return _command(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # a bad spec, model file or server list
        print(f"python -m flexip_eval {args.command}: {e}", file=sys.stderr)
        return 2


def _command(args):
    spec = load_spec(args.spec)
    out = output_folder(spec, args.out)
    progress = not args.no_progress
    complete = True
    if args.command == "run":
        if args.queue_depth:
            spec.queue_depth = args.queue_depth
        summary = Runner(spec, out, args.server, progress=progress).run()
        print(f"generated {summary.generated}, found on disk {summary.skipped}, given up {len(summary.given_up)}, "
              f"left {summary.left}" + (f"; servers that stopped: {', '.join(summary.dead_servers)}"
                                        if summary.dead_servers else ""))
        complete = summary.complete
        if args.generate_only:
            return 0 if complete else 1
    report = score_and_report(spec, out, progress)
    print(f"report: {report}")
    if not complete:
        print("some images are missing (see the report's Generation section); run the same command again to "
              "generate only those", file=sys.stderr)
    return 0 if complete else 1
