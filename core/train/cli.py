"""`python -m core train --config run.json [--resume]`: train a Wan DiT (LoRA or full) on a folder
of captioned clips. Under `torchrun --nproc_per_node N -m core train ...` it runs data-parallel.

The config is one JSON object; relative paths are relative to the config file:

    {
      "data": "clips/",                 folder of clips + captions (see core/train/data.py)
      "vae": "wan_2.1_vae.safetensors", the VAE checkpoint that encodes the clips
      "dit": "wan2.1_t2v_1.3B.safetensors",  DiT checkpoint to fine-tune, or instead
      "dit_preset": "tiny-t2v",         a preset name (core/dit/config.py) trained from scratch
      "dit_dtype": "fp32",              weight/compute dtype of the DiT: fp32 (default) or bf16
      "width": 832, "height": 480, "frames": 81, "frame_stride": 1,   clip preprocessing
      "cache_dir": "latents/",          where encoded latents are cached (default <output_dir>/latents)
      "text_embeddings": "embeds.safetensors",  {caption: [L_text, text_dim]} text embeddings
                                        (the key "" is the empty prompt, needed for caption_dropout);
                                        without it the model is trained unconditionally
      "caption_dropout": 0.1,           probability of training a sample on the empty prompt (CFG)
      "lora_rank": 16,                  LoRA rank; 0 or absent = full fine-tuning
      "lora_alpha": 16,                 LoRA alpha (default = rank)
      "lora_targets": ["self_attn.q", ...],  layers adapted (default: attention q/k/v/o, ffn.0/2)
      "sampling": "table",              'table' (shift + bell weights) or 'logit_normal'
      "shift": 5.0,                     shift of the training table
      "logit_mean": 0.0, "logit_std": 1.0,   logit-normal parameters
      "first_frame_prob": 0.0,          TI2V: probability that latent frame 0 stays clean
      "train": {"steps": 1000, "batch_size": 1, "lr": 1e-4, "output_dir": "runs/my_lora", ...}
                                        any TrainConfig field (core/train/loop.py)
    }

Outputs in train.output_dir: checkpoints/, loss.csv, loss.png, trained.safetensors (the trained
weights; for full fine-tuning a complete DiT loadable by load_dit), and for LoRA runs
lora.safetensors (+ lora_ema.safetensors with EMA) in the layout ComfyUI's LoraLoaderModelOnly reads.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

CONFIG_KEYS = frozenset({"data", "vae", "dit", "dit_preset", "dit_dtype", "width", "height", "frames",
               "frame_stride", "cache_dir", "text_embeddings", "caption_dropout", "lora_rank",
               "lora_alpha", "lora_targets", "sampling", "shift", "logit_mean", "logit_std",
               "first_frame_prob", "train"})
PATH_KEYS = ("data", "vae", "dit", "cache_dir", "text_embeddings")
# The JSON type each top-level key must have (int also accepted where a number is asked for).
_NUMBER, _WHOLE, _TEXT = "a number", "a whole number", "a string"
CONFIG_TYPES = {
    "data": _TEXT, "vae": _TEXT, "dit": _TEXT, "dit_preset": _TEXT, "dit_dtype": _TEXT,
    "width": _WHOLE, "height": _WHOLE, "frames": _WHOLE, "frame_stride": _WHOLE,
    "cache_dir": _TEXT, "text_embeddings": _TEXT, "caption_dropout": _NUMBER, "lora_rank": _WHOLE,
    "lora_alpha": _NUMBER, "lora_targets": "a list of strings", "sampling": _TEXT,
    "shift": _NUMBER, "logit_mean": _NUMBER, "logit_std": _NUMBER, "first_frame_prob": _NUMBER,
    "train": "an object",
}


def _has_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == _NUMBER:
        return isinstance(value, (int, float))
    if kind == _WHOLE:
        return isinstance(value, int)
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == "an object":
        return isinstance(value, dict)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_config_types(cfg: dict[str, Any], name: str) -> None:
    """TypeError naming the key for a value of the wrong JSON type (lora_rank: "two")."""
    for key, kind in CONFIG_TYPES.items():
        if key in cfg and not _has_type(cfg[key], kind):
            value = cfg[key]
            quoted = " (a string: write numbers without quotes)" if isinstance(value, str) else ""
            raise TypeError(f"{name}: {key!r} must be {kind}, got {value!r}{quoted}")


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `train` subcommand on the core CLI."""
    p = sub.add_parser("train", help="train a DiT (LoRA or full) on a folder of captioned clips",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="JSON run configuration (see above)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the output folder")
    p.set_defaults(func=run)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the JSON config; paths made absolute relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path.name}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{path.name}: the config must be a JSON object")
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(CONFIG_KEYS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{path.name}: unknown keys {unknown}{hint}; a misspelt key would be "
                         f"ignored, so it is refused; allowed: {sorted(CONFIG_KEYS)}")
    for key in ("data", "vae"):
        if key not in cfg:
            raise ValueError(f"{path.name}: '{key}' is required")
    check_config_types(cfg, path.name)
    if ("dit" in cfg) == ("dit_preset" in cfg):
        raise ValueError(f"{path.name}: give exactly one of 'dit' (a checkpoint to fine-tune) and "
                         f"'dit_preset' (a preset trained from scratch)")
    base = path.parent
    for key in PATH_KEYS:
        if key in cfg:
            cfg[key] = str((base / cfg[key]).resolve())
    train_cfg = dict(cfg.get("train", {}))
    output_dir = train_cfg.get("output_dir", "train_output")
    if not isinstance(output_dir, str):
        raise TypeError(f"{path.name}: train.output_dir must be a string, got {output_dir!r}")
    train_cfg["output_dir"] = str((base / output_dir).resolve())
    check_output_dir(train_cfg["output_dir"])
    cfg["train"] = train_cfg
    return cfg


def check_output_dir(path: str | os.PathLike) -> Path:
    """The output folder, or ValueError when the path exists and is not a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"train.output_dir {path} is a file, not a folder; choose a folder name "
                         f"(nothing was written)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"train.output_dir {path}: {parent} is a file, not a folder")
            break
    return path


def run(args: argparse.Namespace) -> int:
    """The `train` subcommand."""
    import torch
    import torch.distributed as dist

    from ..dit import WanDiT, get_preset, load_dit
    from ..vae import load_vae
    from .checkpointing import latest_checkpoint, load_tensors
    from .data import DataConfig, cache_latents
    from .lora import DEFAULT_TARGETS, LoRAConfig, add_lora, save_lora
    from .loop import TrainConfig, load_trained, train
    from .loss import drop_condition, flow_matching_loss
    from ..flow.schedules import training_table

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config)
    tcfg = TrainConfig.from_dict(cfg["train"])
    out = Path(tcfg.output_dir)
    if not args.resume and latest_checkpoint(out / "checkpoints") is not None:
        raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it, or "
                         f"choose another train.output_dir (nothing was overwritten)")
    data_cfg = DataConfig(width=cfg.get("width", 832), height=cfg.get("height", 480),
                          frames=cfg.get("frames", 81), frame_stride=cfg.get("frame_stride", 1))

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available()
                          else "cpu") if tcfg.device == "auto" else torch.device(tcfg.device)
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        vae = load_vae(cfg["vae"], device=device)
        cache = cfg.get("cache_dir", str(out / "latents"))
        if rank == 0:  # rank 0 encodes; the others then find everything cached
            dataset = cache_latents(cfg["data"], vae, cache, data_cfg)
        if world > 1:
            dist.barrier()
        if rank != 0:
            dataset = cache_latents(cfg["data"], vae, cache, data_cfg)
        del vae
        if rank == 0:
            logging.info(dataset.report())

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(cfg.get("dit_dtype", "fp32"))
        if dtype is None:
            raise ValueError(f"dit_dtype must be 'fp32' or 'bf16', got {cfg.get('dit_dtype')!r}")
        if "dit" in cfg:
            dit = load_dit(cfg["dit"], dtype=dtype)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tcfg.seed)
                dit = WanDiT(get_preset(cfg["dit_preset"]), compute_dtype=dtype).to(dtype)
        text_dim = dit.config.text_dim
        embeds = load_tensors(cfg["text_embeddings"]) if "text_embeddings" in cfg else None
        dropout = float(cfg.get("caption_dropout", 0.0))
        _check_embeddings(dataset, embeds, dropout, text_dim, cfg.get("text_embeddings"))

        rank_lora = int(cfg.get("lora_rank", 0))
        if rank_lora:
            add_lora(dit, LoRAConfig(rank=rank_lora, alpha=cfg.get("lora_alpha"),
                                     targets=tuple(cfg.get("lora_targets", DEFAULT_TARGETS))),
                     generator=torch.Generator().manual_seed(tcfg.seed))
        table = training_table(shift=float(cfg.get("shift", 5.0)))
        loss_kw = dict(sampling=cfg.get("sampling", "table"), table=table,
                       logit_mean=float(cfg.get("logit_mean", 0.0)),
                       logit_std=float(cfg.get("logit_std", 1.0)),
                       first_frame_prob=float(cfg.get("first_frame_prob", 0.0)))

        def loss_fn(model, batch, generator):
            context = _contexts(batch["caption"], embeds, text_dim, batch["latent"])
            if dropout > 0:
                context = drop_condition(context, _pad(embeds[""], context.shape[1]), dropout,
                                         generator)
            return flow_matching_loss(model, batch["latent"], context, generator=generator,
                                      **loss_kw)

        result = train(dit, loss_fn, dataset, tcfg, resume=args.resume)
        if rank == 0:
            if rank_lora:
                path = save_lora(dit, out / "lora.safetensors", metadata={"steps": str(result.step)})
                logging.info("LoRA (ComfyUI LoraLoaderModelOnly): %s", path)
                if result.ema_weights is not None:
                    load_trained(dit, result.ema_weights)
                    logging.info("EMA LoRA: %s", save_lora(dit, out / "lora_ema.safetensors"))
            logging.info("trained %d steps, last loss %.4f; weights: %s", result.step,
                         result.loss, result.weights)
    finally:
        if owns_group:
            dist.destroy_process_group()
    return 0


def _pad(context, length: int):
    """[L, D] -> [L', D] zero-padded to `length` tokens (the official Wan pads text with zeros)."""
    import torch.nn.functional as F

    return F.pad(context, (0, 0, 0, length - context.shape[0]))


def _contexts(captions: list[str], embeds, text_dim: int, like):
    """Each caption's embedding, zero-padded to the longest in the batch: [B, L, text_dim]."""
    import torch

    if embeds is None:
        return like.new_zeros(len(captions), 1, text_dim)
    length = max(embeds[c].shape[0] for c in captions)
    return torch.stack([_pad(embeds[c], length) for c in captions]).to(like.device, like.dtype)


def _check_embeddings(dataset, embeds, dropout: float, text_dim: int, path: str | None) -> None:
    """Drop (and report) clips whose caption has no embedding; check widths and the empty prompt."""
    from .data import SkippedClip

    if embeds is None:
        if dropout > 0:
            raise ValueError("caption_dropout needs text_embeddings with the empty prompt (key \"\")")
        logging.warning("no text_embeddings given: training without text conditioning")
        return
    bad = [k for k, v in embeds.items() if v.ndim != 2 or v.shape[1] != text_dim]
    if bad:
        raise ValueError(f"{path}: embeddings must be [L_text, {text_dim}] for this DiT; "
                         f"{bad[0]!r} has shape {list(embeds[bad[0]].shape)}")
    if dropout > 0 and "" not in embeds:
        raise ValueError(f"{path}: caption_dropout needs the empty prompt's embedding (key \"\")")
    kept = []
    for entry in dataset.entries:
        if entry[1] in embeds:
            kept.append(entry)
        else:
            dataset.skipped.append(SkippedClip(str(entry[2]), f"caption {entry[1]!r} has no "
                                                              f"embedding in {Path(path).name}"))
            logging.warning("skipped clip %s: its caption has no embedding in %s", entry[2], path)
    if not kept:
        raise ValueError(f"no clip's caption has an embedding in {path}")
    dataset.entries[:] = kept
