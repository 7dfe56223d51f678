"""python -m flexip_train --config my_run.toml: train FlexIP's adapters on a frozen SD1.5.

Run from the pack's folder (ComfyUI/custom_nodes/comfyui-flexip). One GPU:
    python -m flexip_train --config my_run.toml
Several GPUs or machines: the same command under accelerate (see docs/training.md):
    accelerate launch --multi_gpu --num_processes 8 -m flexip_train --config my_run.toml
Manifests into tar shards, for data of millions of samples ([data] shards streams them):
    python -m flexip_train shards data/manifest.jsonl --out data/shards
The frozen features of a run's data into tar shards, once ([data] features streams them):
    python -m flexip_train features --config my_run.toml --out data/features
"""
import argparse
import hashlib
import sys
from pathlib import Path

from .config import ConfigError, TrainConfig, describe_options, load_config, to_toml


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m flexip_train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train FlexIP (preservation and personalization adapters, per-layer projections and the "
                    "gate) on a frozen SD1.5 loaded by ComfyUI, and export the weight file FlexIPLoader loads. "
                    "`python -m flexip_train shards --help`: write manifests into tar shards for [data] shards. "
                    "`python -m flexip_train features --help`: encode a run's data once into a feature set for "
                    "[data] features.",
        epilog="The config file is TOML with these sections and options (defaults shown):\n\n" + describe_options())
    parser.add_argument("--config", help="the run's TOML file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one option (VALUE in TOML syntax, e.g. --set run.max_steps=100)")
    parser.add_argument("--print-config", action="store_true", help="print the complete configuration as TOML and exit")
    parser.add_argument("--no-export", action="store_true", help="do not write the FlexIP weight file at the end")
    return parser.parse_args(argv)


def parse_shards_args(argv):
    from .shards import __doc__ as layout
    parser = argparse.ArgumentParser(prog="python -m flexip_train shards", description=layout,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", type=Path, help="JSONL manifests")
    parser.add_argument("--out", required=True, type=Path, help="the shard set's folder (empty or new)")
    parser.add_argument("--samples-per-shard", type=int, default=1000,
                        help="samples per tar (default 1000); each kind needs at least processes x workers shards")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not decode the samples (the manifest's own checks still run)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser.parse_args(argv)


def written_set(command, write, nothing):
    """Run a set writer (-> (index, problems)) and print a summary like the builders'. -> the index, or
    None after the error `nothing` when it wrote no sample."""
    from .manifest import summarize
    try:
        index, problems = write()
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        sys.exit(f"flexip_train {command}: {e}")
    print(summarize(range(index["samples"]), problems))
    if not index["samples"]:
        print(f"error: {nothing}", file=sys.stderr)
        return None
    return index


def write_shards_command(argv):
    """python -m flexip_train shards: exit status 1 when nothing was written."""
    from .shards import write_shards
    args = parse_shards_args(argv)
    index = written_set("shards", lambda: write_shards(args.manifests, args.out, args.samples_per_shard, args.check,
                                                       args.progress),
                        f"no usable sample in {', '.join(map(str, args.manifests))}")
    if index is None:
        return 1
    kinds = ", ".join(f"{sum(s['kind'] == k for s in index['shards'])} {k} shards ({n} samples)"
                      for k, n in index["kinds"].items())
    print(f"wrote {kinds} to {args.out}")
    return 0


def parse_features_args(argv):
    from .feature_shards import __doc__ as layout
    parser = argparse.ArgumentParser(prog="python -m flexip_train features", description=layout,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the run's TOML file: its [data], [model] and run.seed")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one option, as for training")
    parser.add_argument("--out", required=True, type=Path, help="the feature set's folder (empty or new)")
    parser.add_argument("--samples-per-shard", type=int, default=1000,
                        help="samples per tar from manifests (default 1000); from [data] shards the features keep "
                             "its shards")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser.parse_args(argv)


def write_features_command(argv):
    """python -m flexip_train features: exit status 1 when nothing was written."""
    from .feature_shards import write_features
    args = parse_features_args(argv)
    config = read_config(args.config, args.set)
    base, flexip_config = load_base(config)
    index = written_set("features", lambda: write_features(config, base, flexip_config, args.out,
                                                           args.samples_per_shard, args.progress),
                        f"no sample of {args.config}'s data loads")
    if index is None:
        return 1
    print(f"wrote the features of {index['samples']} samples ({len(index['shards'])} shards) to {args.out}; "
          f"train from them with [data] features = \"{args.out}\"")
    return 0


def read_config(path, pairs):
    try:
        return load_config(path, overrides(pairs))
    except ConfigError as e:
        sys.exit(f"flexip_train: {e}")


def load_base(config):
    """(the frozen base of [model], loaded by ComfyUI's code; the FlexIP configuration)."""
    from flexip_core.config import CONFIGS

    from .comfy_base import FrozenBase, import_comfy
    if config.model.flexip_config not in CONFIGS:
        sys.exit(f"flexip_train: [model] flexip_config {config.model.flexip_config!r} is not one of {', '.join(CONFIGS)}")
    import_comfy(config.model.comfyui)
    flexip_config = CONFIGS[config.model.flexip_config]
    base = FrozenBase.from_files(config.model.checkpoint, config.model.clip_vision, config.model.dino, flexip_config,
                                 config.model.gradient_checkpointing)
    return base, flexip_config


def overrides(pairs):
    import tomllib
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {pair!r}: use SECTION.KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare string
    return out


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["shards"]:
        return write_shards_command(argv[1:])
    if argv[:1] == ["features"]:
        return write_features_command(argv[1:])
    args = parse_args(argv)
    config = read_config(args.config, args.set) if args.config else TrainConfig()
    if args.print_config:
        print(to_toml(config))
        return
    if not args.config:
        sys.exit("flexip_train: --config is required (--print-config writes a file to start from)")

    from accelerate import Accelerator

    from .loop import Trainer
    from .validation import Validator

    accelerator = Accelerator(mixed_precision=config.optim.mixed_precision)  # before ComfyUI picks a device
    base, flexip_config = load_base(config)
    validator = Validator(base, config.validation, Path(config.run.output_dir) / "validation") \
        if config.validation.references and config.validation.prompts else None
    trainer = Trainer(config, base, flexip_config, accelerator, validator)
    trainer.train()
    if not args.no_export:
        path = trainer.export(file_sha256(config.model.checkpoint) if accelerator.is_main_process else None)
        accelerator.print(f"exported {path} (copy it to ComfyUI/models/flexip)")


if __name__ == "__main__":
    sys.exit(main())
