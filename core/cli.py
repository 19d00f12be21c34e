"""Command line of the FlowDiT core. Subcommands register themselves in `COMMANDS`."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    """Print what a checkpoint is (DiT or VAE, detected configuration, which released model it can
    be, how the weights are stored) without building it or reading its weights."""
    from .checkpoint import describe_checkpoint

    print(describe_checkpoint(args.checkpoint))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="FlowDiT core tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="describe a DiT or VAE checkpoint file")
    p.add_argument("checkpoint", help="path to a .safetensors / .pth / .pt file")
    p.set_defaults(func=_cmd_info)
    from .train.cli import add_train_parser  # `train`: core/train/cli.py

    add_train_parser(sub)
    from .generate import add_generate_parser  # `generate`: core/generate.py

    add_generate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        # User mistakes get one clear line, never a traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
