"""python -m flexip_train --config my_run.toml: train FlexIP's adapters on a frozen SD1.5.

Run from the pack's folder (ComfyUI/custom_nodes/comfyui-flexip). One GPU:
    python -m flexip_train --config my_run.toml
Several GPUs or machines: the same command under accelerate (see the README's training section):
    accelerate launch --multi_gpu --num_processes 8 -m flexip_train --config my_run.toml
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
                    "gate) on a frozen SD1.5 loaded by ComfyUI, and export the weight file FlexIPLoader loads.",
        epilog="The config file is TOML with these sections and options (defaults shown):\n\n" + describe_options())
    parser.add_argument("--config", help="the run's TOML file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one option (VALUE in TOML syntax, e.g. --set run.max_steps=100)")
    parser.add_argument("--print-config", action="store_true", help="print the complete configuration as TOML and exit")
    parser.add_argument("--no-export", action="store_true", help="do not write the FlexIP weight file at the end")
    return parser.parse_args(argv)


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
    args = parse_args(argv)
    try:
        config = load_config(args.config, overrides(args.set)) if args.config else TrainConfig()
    except ConfigError as e:
        sys.exit(f"flexip_train: {e}")
    if args.print_config:
        print(to_toml(config))
        return
    if not args.config:
        sys.exit("flexip_train: --config is required (--print-config writes a file to start from)")

    from accelerate import Accelerator

    from flexip_core.config import CONFIGS

    from .comfy_base import FrozenBase, import_comfy
    from .loop import Trainer
    from .validation import Validator

    if config.model.flexip_config not in CONFIGS:
        sys.exit(f"flexip_train: [model] flexip_config {config.model.flexip_config!r} is not one of {', '.join(CONFIGS)}")
    accelerator = Accelerator(mixed_precision=config.optim.mixed_precision)  # before ComfyUI picks a device
    import_comfy(config.model.comfyui)
    flexip_config = CONFIGS[config.model.flexip_config]
    base = FrozenBase.from_files(config.model.checkpoint, config.model.clip_vision, config.model.dino, flexip_config,
                                 config.model.gradient_checkpointing)
    validator = Validator(base, config.validation, Path(config.run.output_dir) / "validation") \
        if config.validation.references and config.validation.prompts else None
    trainer = Trainer(config, base, flexip_config, accelerator, validator)
    trainer.train()
    if not args.no_export:
        path = trainer.export(file_sha256(config.model.checkpoint) if accelerator.is_main_process else None)
        accelerator.print(f"exported {path} (copy it to ComfyUI/models/flexip)")


if __name__ == "__main__":
    main()
