"""Command line of the FlowDiT core: `python -m core info | generate | train`.

Building the parser for `info` or `generate` imports no torch, so argument mistakes are reported
at once; `train` registers itself from core/train/cli.py (which imports torch) only when it is the
command given, or for the top-level help.
"""
from __future__ import annotations

import argparse
import logging
import sys


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage block is what --help is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cmd_info(args: argparse.Namespace) -> int:
    """Print what a checkpoint is (DiT, VAE or the pack's text encoder: detected configuration,
    which released model it can be, how the weights are stored) without building it or reading
    its weights."""
    text_encoder = _describe_text_encoder(args.checkpoint)
    if text_encoder:
        print(text_encoder)
        return 0
    from .checkpoint import describe_checkpoint

    print(describe_checkpoint(args.checkpoint))
    return 0


def _describe_text_encoder(path: str) -> str | None:
    """One line for a FlowDiT text encoder file (recognised by its metadata), else None."""
    import json

    from .text.encoder import METADATA_KEY_CONFIG, METADATA_KEY_VOCAB, SPECIAL_TOKENS

    if not str(path).endswith(".safetensors"):
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        config = json.loads(meta[METADATA_KEY_CONFIG])
        words = [w for w in json.loads(meta[METADATA_KEY_VOCAB]) if w not in SPECIAL_TOKENS]
    except Exception:  # not ours, or not readable: the generic path below explains
        return None
    return (f"FlowDiT text encoder (word-level, for the pack's default model): "
            f"{len(words)} words + {', '.join(SPECIAL_TOKENS)}, dim {config.get('dim')}, "
            f"{config.get('num_layers')} layers, {config.get('num_heads')} heads, "
            f"{config.get('max_len')} tokens per caption; load with "
            f"core.text.load_text_encoder; words: {', '.join(words)}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `python -m core` parser; `command` (the subcommand given, if known) lets it skip
    registering `train`, whose module imports torch."""
    parser = _Parser(prog="python -m core", description="FlowDiT core tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="describe a DiT, VAE or text encoder checkpoint file")
    p.add_argument("checkpoint", help="path to a .safetensors / .pth / .pt file")
    p.set_defaults(func=_cmd_info)
    if command in (None, "train"):
        from .train.cli import add_train_parser  # `train`: core/train/cli.py

        add_train_parser(sub)
    else:
        sub.add_parser("train", help="train a DiT (LoRA or full) on a folder of captioned clips")
    from .generate import add_generate_parser  # `generate`: core/generate.py

    add_generate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in ("info", "generate") else None)
    args = parser.parse_args(argv)
    # Library messages (e.g. unknown words in a prompt) as plain lines on stderr.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        # User mistakes get one clear line, never a traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # The output could not be written (disk full, permissions, the writer failed); what was
        # there before is unchanged (core/video_io.py).
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
