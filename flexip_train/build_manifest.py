"""python -m flexip_train.build_manifest {images,videos,multiview} FOLDER [FOLDER...] --out manifest.jsonl

Scans the folders (the conventions are in --help), writes the usable samples to the manifest
(--append adds to it, leaving out samples it already holds) and prints a summary: how many
samples, how many skipped, by reason, with every skipped path. Exit status 1 when no usable sample was found.
"""
import argparse
import sys
from pathlib import Path

from . import builders
from .manifest import MIN_GAP, Problem, read_manifest, summarize, write_manifest

MODALITY = {"images": "image", "videos": "video", "multiview": "multiview"}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m flexip_train.build_manifest",
                                     description=builders.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{images,videos,multiview}")
    for kind in builders.BUILDERS:
        sub = kinds.add_parser(kind, help=f"a folder of {kind}", description=builders.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("folders", nargs="+", metavar="FOLDER", type=Path)
        sub.add_argument("--out", required=True, type=Path, help="the JSONL manifest to write")
        sub.add_argument("--append", action="store_true",
                         help="add to the manifest instead of replacing it (samples it holds are not added twice)")
        sub.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        if kind == "videos":
            sub.add_argument("--min-gap", type=int, default=MIN_GAP,
                             help=f"frames between the two frames of a pair at least (default {MIN_GAP}); "
                                  "a video needs min gap + 1 frames")
            sub.add_argument("--verify", action="store_true",
                             help="decode every video to the end (slower; finds files cut short)")
        if kind == "multiview":
            sub.add_argument("--pairs-per-view", type=int, default=1,
                             help="targets per reference view: the next N views of its object (default 1)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    options = {"progress": args.progress}
    if args.kind == "videos":
        options.update(min_gap=args.min_gap, verify=args.verify)
    if args.kind == "multiview":
        options.update(pairs_per_view=args.pairs_per_view)
    samples, problems = [], []
    for folder in args.folders:
        if not folder.is_dir():
            problems.append(Problem(str(folder), "not a folder"))
            continue
        found, skipped = builders.BUILDERS[args.kind](folder, **options)
        samples += found
        problems += skipped
    print(summarize(samples, problems, what=f"{MODALITY[args.kind]} samples"))
    if not samples:
        print(f"error: no usable {MODALITY[args.kind]} sample in {', '.join(map(str, args.folders))}; "
              f"nothing written to {args.out}", file=sys.stderr)
        return 1
    already = set()
    if args.append and args.out.is_file():
        already = set(read_manifest(args.out)[0])
    new = [s for s in dict.fromkeys(samples) if s not in already]
    write_manifest(new, args.out, append=args.append)
    held = f" ({len(samples) - len(new)} duplicates left out)" if len(new) < len(samples) else ""
    print(f"{'appended' if args.append else 'wrote'} {len(new)} samples to {args.out}{held}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
