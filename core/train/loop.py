"""The training loop: AdamW, warm-up, gradient clipping, EMA, bf16 mixed precision, gradient
checkpointing, DistributedDataParallel, exact resume from atomic checkpoints, loss log and curve.

    train(model, loss_fn, data, TrainConfig(...)) -> TrainResult

`model` is any nn.Module; only its parameters with requires_grad are trained and checkpointed
(so a LoRA run saves only the adapters). `loss_fn(model, batch, generator) -> (loss, info)` does
the forward pass (e.g. by calling `flow_matching_loss`). `data` is a map-style dataset (len +
getitem) or a `BatchSource`; which samples a step sees is a pure function of (seed, step), so
the data position is the step number and resuming needs nothing else.

Randomness: the generator handed to `loss_fn` is re-seeded every step from (seed, step, rank),
so its draws depend on nothing else. The global torch RNGs (dropout inside the model) are seeded
from (seed, rank) at a fresh start, saved for every rank in each checkpoint, restored on resume.

Mixed precision: fp32 master weights; the forward runs under bf16 autocast, except inside
modules that manage their own compute dtype (the DiT), which compute in bf16 with fp32 islands.

Distributed: launched with `torchrun --nproc_per_node N`, the loop initialises the process group
itself (gloo on CPU, NCCL on CUDA) unless the caller already did, gives each rank its slice of
every global batch, averages gradients with DDP, and lets only rank 0 write files.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from .checkpointing import (LATEST, latest_checkpoint, read_checkpoint, remove_orphans,
                            save_tensors, write_checkpoint)
from .report import LossLog, ProgressBar, render_loss_curve

LossFn = Callable[[nn.Module, Any, torch.Generator], "tuple[torch.Tensor, dict[str, Any]]"]
MIXED_PRECISION = ("auto", "bf16", "no")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (JSON-friendly: numbers, strings, bools)."""

    steps: int = 1000                     # optimiser steps in total; a resumed run continues up to this
    batch_size: int = 1                   # global batch per step, over all ranks (each takes batch_size / world)
    lr: float = 1e-4                      # peak AdamW learning rate, reached after warm-up
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    weight_decay: float = 0.0             # AdamW decoupled weight decay, on matrices only (not biases/norms)
    warmup_steps: int = 0                 # linear warm-up of the lr from 0 over this many steps
    lr_schedule: str = "constant"         # after warm-up: 'constant', or 'cosine' decay to 0 at `steps`
    grad_clip: float = 1.0                # clip the global gradient norm to this (0 = no clipping)
    ema_decay: float = 0.0                # EMA of the trainable weights per step (0 = off; 0.999 is typical)
    checkpoint_every: int = 500           # resumable checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2             # how many of the newest checkpoints stay on disk
    log_every: int = 10                   # flush loss.csv, print progress (non-tty) every N steps
    seed: int = 0                         # seeds the data order, the loss generator and the global RNGs
    mixed_precision: str = "auto"         # 'auto': bf16 on CUDA with bf16 support; 'bf16' (also CPU); 'no'
    gradient_checkpointing: bool = False  # recompute DiT blocks in backward: less memory, ~1/3 slower
    device: str = "auto"                  # 'auto' (cuda:LOCAL_RANK, else cpu) or a torch device string
    output_dir: str = "train_output"      # checkpoints/, loss.csv, loss.png, final weights
    progress: bool = True                 # progress bar with ETA on stderr (rank 0 only)
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters get no gradient

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "train") -> "TrainConfig":
        """A TrainConfig from JSON values; an unknown key (a typo) is an error naming the closest
        field, never silently ignored."""
        import difflib

        if not isinstance(values, dict):
            raise TypeError(f"{where} must be a JSON object of settings, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{where}: unknown key {key!r}; {hint}allowed: {', '.join(known)}")
        return cls(**{k: (tuple(v) if k == "betas" and isinstance(v, list) else v)
                      for k, v in values.items()})

    def __post_init__(self) -> None:
        _check_field_types(self)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _check_device(self.device)
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "log_every", "keep_checkpoints", "seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0 (grad_clip 0 = off)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1 (the newest checkpoint is always kept)")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step `step` (1-based)."""
        if self.warmup_steps and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.lr_schedule == "cosine":
            span = max(1, self.steps - self.warmup_steps)
            done = min(1.0, (step - self.warmup_steps) / span)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * done))
        return self.lr


_INT_FIELDS = ("steps", "batch_size", "warmup_steps", "checkpoint_every", "keep_checkpoints",
               "log_every", "seed")
_FLOAT_FIELDS = ("lr", "weight_decay", "grad_clip", "ema_decay")
_STR_FIELDS = ("lr_schedule", "mixed_precision", "device", "output_dir")
_BOOL_FIELDS = ("gradient_checkpointing", "progress", "find_unused_parameters")


def _kind(value: Any) -> str:
    return "a string" if isinstance(value, str) else f"a {type(value).__name__}"


def _check_field_types(config: "TrainConfig") -> None:
    """TypeError naming the field for a value of the wrong JSON type (e.g. lr: "1e-3")."""
    for name in _INT_FIELDS:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"train.{name} must be a whole number, got {v!r} ({_kind(v)}); "
                            f"write it without quotes, e.g. \"{name}\": 100")
    for name in _FLOAT_FIELDS:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"train.{name} must be a number, got {v!r} ({_kind(v)}); write it "
                            f"without quotes, e.g. \"{name}\": 1e-4")
        if not math.isfinite(v):
            raise ValueError(f"train.{name} must be a finite number, got {v!r}")
    for name in _STR_FIELDS:
        v = getattr(config, name)
        if not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"train.{name} must be a string, got {v!r} ({_kind(v)})")
    for name in _BOOL_FIELDS:
        v = getattr(config, name)
        if not isinstance(v, bool):
            raise TypeError(f"train.{name} must be true or false, got {v!r} ({_kind(v)})")
    betas = config.betas
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in betas)):
        raise TypeError(f"train.betas must be two numbers, e.g. [0.9, 0.999], got {betas!r}")


def _check_device(device: str) -> None:
    """ValueError for a device string torch does not know or this machine does not have."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"train.device {device!r} is not a device this pack can train on; use "
                         f"'auto', 'cpu' or 'cuda' (or 'cuda:N')") from err
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"train.device {device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {device!r} but this machine has no usable CUDA GPU; "
                         f"use 'auto' or 'cpu'")


@dataclass(frozen=True)
class TrainResult:
    """What a run produced. Paths are None on ranks other than 0."""

    step: int                             # the last completed step (== config.steps)
    loss: float                           # loss of the last step (mean over ranks)
    losses: tuple[float, ...] = ()        # loss per step, from step 1 (resumed runs included)
    resumed_from: int | None = None       # the step of the checkpoint resumed from, if any
    seconds: float = 0.0                  # wall time of this call
    output_dir: Path | None = None
    weights: Path | None = None           # final trainable weights (.safetensors)
    ema_weights: Path | None = None       # their EMA (.safetensors), when ema_decay > 0
    checkpoint: Path | None = None        # the final checkpoint directory
    trainable_keys: tuple[str, ...] = field(default=(), repr=False)


@runtime_checkable
class BatchSource(Protocol):
    """Data for the loop: the batch of `step` (1-based), for one rank.

    It must be a pure function of its arguments, so that resuming at a step reproduces the data
    exactly and the ranks together see the global batch of `batch_size` samples (rank r takes its
    r-th slice of batch_size // world_size)."""

    def get_batch(self, step: int, batch_size: int, rank: int, world_size: int, seed: int) -> Any:
        ...


def default_collate(samples: Sequence[Any]) -> Any:
    """Stack tensors, keep lists of anything else; dicts and tuples are collated per field."""
    first = samples[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(samples))
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(default_collate(list(group)) for group in zip(*samples))
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return torch.tensor(list(samples))
    return list(samples)


class DatasetBatches:
    """A map-style dataset as a BatchSource: the sample stream is the concatenation of one
    random permutation of the dataset per epoch (permutation e seeded by (seed, e)); global batch
    `step` is the slice [(step-1)·B, step·B) of that stream."""

    def __init__(self, dataset: Any, collate: Callable[[Sequence[Any]], Any] = default_collate,
                 shuffle: bool = True) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"data must be a map-style dataset (len and indexing) or a "
                            f"BatchSource, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: nothing to train on")
        self.dataset, self.collate, self.shuffle = dataset, collate, shuffle
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """Dataset indices of global batch `step`."""
        n = len(self.dataset)
        out = []
        for pos in range((step - 1) * batch_size, step * batch_size):
            epoch, i = divmod(pos, n)
            if (seed, epoch) not in self._perms:
                if len(self._perms) > 4:
                    self._perms.clear()
                g = torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5EED))
                self._perms[(seed, epoch)] = (torch.randperm(n, generator=g) if self.shuffle
                                              else torch.arange(n))
            out.append(int(self._perms[(seed, epoch)][i]))
        return out

    def get_batch(self, step: int, batch_size: int, rank: int, world_size: int, seed: int) -> Any:
        per = batch_size // world_size
        mine = self.indices(step, batch_size, seed)[rank * per:(rank + 1) * per]
        return self.collate([self.dataset[i] for i in mine])


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix-style), so nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFF_FFFF_FFFF_FFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFF_FFFF_FFFF_FFFF
        h ^= h >> 31
    return h & 0x7FFF_FFFF_FFFF_FFFF


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Recompute every block of each `blocks` ModuleList (the DiT's) during backward.

    Uses the model's own `enable_gradient_checkpointing()` when it has one; otherwise wraps each
    block's forward from the outside with torch.utils.checkpoint (non-reentrant), leaving module
    names and state-dict keys unchanged, and restores the blocks on exit. Yields the number of
    blocks wrapped.
    """
    if not enabled:
        yield 0
        return
    if hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
        try:
            yield -1
        finally:
            if hasattr(model, "disable_gradient_checkpointing"):
                model.disable_gradient_checkpointing()
        return
    blocks = [b for name, m in model.named_modules()
              if name.rsplit(".", 1)[-1] == "blocks" and isinstance(m, nn.ModuleList) for b in m]
    if not blocks:
        raise ValueError(f"gradient_checkpointing needs a model with a `blocks` list (a DiT); "
                         f"{type(model).__name__} has none — set gradient_checkpointing to false")
    for block in blocks:
        block.forward = functools.partial(_checkpointed, type(block).forward.__get__(block))
    try:
        yield len(blocks)
    finally:
        for block in blocks:
            del block.forward  # the instance attribute; the class's forward shows through again


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


class _LossModule(nn.Module):
    """Runs loss_fn inside forward, so DDP sees the forward pass it needs for gradient sync."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.loss_fn(self.model, batch, generator)


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we tear it down


def _setup(config: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if config.device == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), device, owns)
    return _Dist(0, 1, device, owns)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, plus the buffers, by name (what a checkpoint holds)."""
    out = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out.update({n: b for n, b in model.named_buffers() if b is not None})
    return out


def _model_metadata(model: nn.Module) -> dict[str, str]:
    """Metadata a weights file of `model` carries: a DiT's head count (see core/dit/config.py),
    so that the exported file loads back with the right heads at any width."""
    from ..dit.config import DiTConfig, dit_metadata

    config = getattr(model, "config", None)
    return dit_metadata(config) if isinstance(config, DiTConfig) else {}


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether this run computes in bf16: 'bf16', or 'auto' on a CUDA device that supports it."""
    return config.mixed_precision == "bf16" or (
        config.mixed_precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def _autocast(config: TrainConfig, device: torch.device):
    if not use_bf16(config, device):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextmanager
def own_compute_dtype(model: nn.Module, dtype: torch.dtype | None) -> Iterator[int]:
    """Mixed precision for modules that manage their own compute dtype (a `compute_dtype`
    attribute, as the DiT has: bf16 matmuls around fp32 norm/modulation islands): set it to
    `dtype` and switch autocast off inside them, so autocast (used for the rest of the model)
    cannot push their fp32 islands to bf16. Restored on exit. Yields how many modules."""
    found = [m for m in model.modules() if isinstance(getattr(m, "compute_dtype", None), torch.dtype)]
    if dtype is None or not found:
        yield 0
        return
    saved = [(m, m.compute_dtype) for m in found]
    for m in found:
        m.compute_dtype = dtype
        m.forward = functools.partial(_without_autocast, type(m).forward.__get__(m))
    try:
        yield len(found)
    finally:
        for m, original in saved:
            m.compute_dtype = original
            del m.forward


def _without_autocast(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
    with torch.autocast(device_type=device, enabled=False):
        return forward(*args, **kwargs)


def _rng_states(d: _Dist) -> dict[str, Any]:
    """Every rank's global CPU (and CUDA) RNG state, gathered to all ranks."""
    states = {"cpu": torch.get_rng_state()}
    if d.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(d.device)
    if d.world == 1:
        return {k: [v] for k, v in states.items()}
    out = {}
    for key, value in states.items():
        moved = value.to(d.device)
        parts = [torch.empty_like(moved) for _ in range(d.world)]
        dist.all_gather(parts, moved)
        out[key] = [p.cpu() for p in parts]
    return out


def _restore_rng(states: dict[str, Any], d: _Dist) -> None:
    if len(states["cpu"]) != d.world:
        raise ValueError(f"the checkpoint was written by {len(states['cpu'])} processes but this run "
                         f"has {d.world}; resume with the same number of processes")
    torch.set_rng_state(states["cpu"][d.rank])
    if d.device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"][d.rank], d.device)


def _param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay},
                        {"params": rest, "weight_decay": 0.0}) if g["params"]]


def train(model: nn.Module, loss_fn: LossFn, data: Any, config: TrainConfig, *,
          resume: bool = True, collate: Callable[[Sequence[Any]], Any] = default_collate,
          callback: Callable[[int, float, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train `model` for `config.steps` steps (see the module docstring).

    loss_fn(model, batch, generator) -> (scalar loss, info dict); model is the raw module (not
    the DDP wrapper), batch this rank's share of the step's global batch.
    data: a BatchSource, or a map-style dataset (wrapped in DatasetBatches with `collate`).
    resume: continue from `output_dir/checkpoints/latest` when it exists (exact: weights,
        optimiser, EMA, RNGs, step and data position); False starts afresh and overwrites.
    callback(step, loss, info): called on every rank after each step (e.g. to sample previews).
    """
    t_start = time.monotonic()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    source = data if isinstance(data, BatchSource) else DatasetBatches(data, collate)
    d = _setup(config)
    try:
        return _run(model, loss_fn, source, config, resume, callback, d, t_start)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _run(model: nn.Module, loss_fn: LossFn, source: BatchSource, config: TrainConfig,
         resume: bool, callback, d: _Dist, t_start: float) -> TrainResult:
    if config.batch_size % d.world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of "
                         f"processes ({d.world})")
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file, not a folder; choose a folder name "
                         f"(nothing was written)")
    ckpt_root = out / "checkpoints"
    is_main = d.rank == 0
    if is_main:  # what a killed run left half-written
        for orphan in remove_orphans(ckpt_root) + remove_orphans(out):
            logging.getLogger(__name__).info("removed %s, left by an interrupted run", orphan)
    model.to(d.device)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
    optimizer = torch.optim.AdamW(_param_groups(named, config.weight_decay), lr=config.lr,
                                  betas=config.betas)
    ema = ({n: p.detach().float().clone() for n, p in named} if config.ema_decay > 0 else None)
    log = LossLog(out / "loss.csv")

    step, resumed_from = 0, None
    latest = latest_checkpoint(ckpt_root) if resume else None
    if latest is not None:
        step = resumed_from = _load(latest, model, optimizer, ema, d, config)
    else:
        torch.manual_seed(mix_seed(config.seed, d.rank, 0x61))
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if latest is None:  # a fresh start: an older run's log and pointer must not mix in
            log.path.unlink(missing_ok=True)
            (ckpt_root / LATEST).unlink(missing_ok=True)
        elif latest is not None:
            log.truncate(step)
    if step >= config.steps:
        raise ValueError(f"the checkpoint in {ckpt_root} is at step {step}, already at or past "
                         f"steps={config.steps}; raise `steps` to train further")

    module = _LossModule(model, loss_fn)
    if d.world > 1:
        ids = [d.device.index] if d.device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=config.find_unused_parameters)
    params = [p for _, p in named]
    bar = ProgressBar(config.steps, step, config.log_every) if (is_main and config.progress) else None
    generator = torch.Generator(device="cpu")
    loss_value, checkpoint = float("nan"), None
    bf16 = torch.bfloat16 if use_bf16(config, d.device) else None
    with gradient_checkpointing(model, config.gradient_checkpointing), own_compute_dtype(model, bf16):
        while step < config.steps:
            step += 1
            lr = config.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = _to_device(source.get_batch(step, config.batch_size, d.rank, d.world,
                                                config.seed), d.device)
            generator.manual_seed(mix_seed(config.seed, step, d.rank))
            optimizer.zero_grad(set_to_none=True)
            with _autocast(config, d.device):
                loss, info = module(batch, generator)
            if loss.ndim != 0:
                raise ValueError(f"loss_fn must return a scalar loss, got shape {list(loss.shape)}")
            loss.backward()
            grad_norm = _clip(params, config.grad_clip)
            optimizer.step()
            if ema is not None:
                with torch.no_grad():
                    for n, p in named:
                        ema[n].lerp_(p.detach().float(), 1.0 - config.ema_decay)
            loss_value = _mean_over_ranks(loss.detach().float(), d)
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {step}; lower lr (now {lr:g}), keep "
                    f"grad_clip on, or check the data; resume from the last checkpoint")
            if is_main:
                log.add(step, loss_value, lr, grad_norm, time.monotonic() - t_start)
                if step % max(1, config.log_every) == 0:
                    log.flush()
                if bar is not None:
                    bar.update(step, loss_value, lr)
            if callback is not None:
                callback(step, loss_value, info)
            last = step == config.steps
            if last or (config.checkpoint_every and step % config.checkpoint_every == 0):
                checkpoint = _save(ckpt_root, step, model, optimizer, ema, d, config, log)
    if bar is not None:
        bar.close()
    return _finish(out, model, ema, d, step, loss_value, resumed_from, checkpoint, log, t_start)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _clip(params: list[nn.Parameter], max_norm: float) -> float:
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad.float()) for p in grads])))


def _mean_over_ranks(value: torch.Tensor, d: _Dist) -> float:
    if d.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= d.world
    return float(value)


def _save(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
          ema: dict[str, torch.Tensor] | None, d: _Dist, config: TrainConfig,
          log: LossLog) -> Path | None:
    rng = _rng_states(d)  # collective: every rank takes part
    path = None
    if d.rank == 0:
        log.flush()
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng,
                 "world_size": d.world, "seed": config.seed,
                 "config": {k: v for k, v in asdict(config).items()
                            if isinstance(v, (int, float, str, bool))}}
        path = write_checkpoint(root, step, trainable_state(model), ema, state,
                                config.keep_checkpoints)
        rows = log.read()
        render_loss_curve([r["step"] for r in rows], [r["loss"] for r in rows],
                          root.parent / "loss.png")
    if d.world > 1:
        dist.barrier()
    return path


def _load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
          ema: dict[str, torch.Tensor] | None, d: _Dist, config: TrainConfig) -> int:
    weights, ema_saved, state = read_checkpoint(path)
    expected = trainable_state(model)
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    if missing or unexpected:
        raise ValueError(f"{path}: the checkpoint's weights do not fit this model (missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); resume "
                         f"with the same model and LoRA settings, or use a new output_dir")
    if state.get("seed") != config.seed:
        raise ValueError(f"{path} was trained with seed {state.get('seed')}, this config has seed "
                         f"{config.seed}; keep the seed to resume exactly")
    with torch.no_grad():
        for name, tensor in expected.items():
            if tensor.shape != weights[name].shape:
                raise ValueError(f"{path}: {name} has shape {list(weights[name].shape)} in the "
                                 f"checkpoint but {list(tensor.shape)} in the model")
            tensor.copy_(weights[name])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        if ema_saved is None:
            raise ValueError(f"{path} has no EMA weights but ema_decay is {config.ema_decay}; "
                             f"set ema_decay to 0 or start a new run")
        for name in ema:
            ema[name].copy_(ema_saved[name])
    _restore_rng(state["rng"], d)
    return int(state["step"])


def _finish(out: Path, model: nn.Module, ema: dict[str, torch.Tensor] | None, d: _Dist, step: int,
            loss: float, resumed_from: int | None, checkpoint: Path | None, log: LossLog,
            t_start: float) -> TrainResult:
    weights = ema_path = None
    losses: tuple[float, ...] = ()
    if d.rank == 0:
        log.flush()
        meta = {"step": str(step), **_model_metadata(model)}
        weights = save_tensors(trainable_state(model), out / "trained.safetensors", metadata=meta)
        if ema is not None:
            ema_path = save_tensors(ema, out / "ema.safetensors", metadata=meta)
        rows = log.read()
        losses = tuple(r["loss"] for r in rows)
        render_loss_curve([r["step"] for r in rows], list(losses), out / "loss.png")
    return TrainResult(step=step, loss=loss, losses=losses, resumed_from=resumed_from,
                       seconds=time.monotonic() - t_start, output_dir=out, weights=weights,
                       ema_weights=ema_path, checkpoint=checkpoint,
                       trainable_keys=tuple(trainable_state(model)))


def load_trained(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load weights written by `train` (trained.safetensors, ema.safetensors, or a checkpoint
    directory) into `model` in place. strict: every key in the file must exist in the model."""
    from .checkpointing import WEIGHTS_FILE, load_tensors

    path = Path(path)
    weights = load_tensors(path / WEIGHTS_FILE if path.is_dir() else path)
    missing = model.load_state_dict(weights, strict=False)
    if strict and missing.unexpected_keys:
        raise ValueError(f"{path}: keys not in the model: {missing.unexpected_keys[:3]}")
    return model
