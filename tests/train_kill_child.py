"""The child side of the kill -9 test in test_fault_catalogue.py (not a test module): a tiny
training run that SIGKILLs itself at the `kill_at`-th file-system call of the checkpoint and log
writers, sometimes half-way through a file, and records each finished step in `progress`."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from torch import nn

STEPS = 40
CHECKPOINT_EVERY = 2


class Batches:
    """A BatchSource: batch `step` is a pure function of (seed, step)."""

    def get_batch(self, step, batch_size, rank, world_size, seed):
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        x = torch.randn(batch_size, 8, generator=g)
        return {"x": x, "y": x.flip(-1) * 0.5}


def model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))


def loss_fn(m, batch, generator):
    noise = 0.01 * torch.randn(batch["x"].shape, generator=generator)
    return nn.functional.mse_loss(m(batch["x"] + noise), batch["y"]), {}


def config(out: str):
    from core.train import TrainConfig

    return TrainConfig(steps=STEPS, batch_size=4, lr=1e-2, checkpoint_every=CHECKPOINT_EVERY,
                       keep_checkpoints=2, log_every=1, ema_decay=0.9, progress=False,
                       output_dir=out)


def run(out: str, progress: str, kill_at: int, torn: bool) -> None:
    """Train in `out`; die by SIGKILL at the kill_at-th instrumented call (0: never)."""
    torch.set_num_threads(1)
    import safetensors.torch

    import core.train.checkpointing as ck
    from core.train import train

    calls = [0]

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn, writes_path_arg=None):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] != kill_at:
                return fn(*args, **kwargs)
            if torn and writes_path_arg is not None:  # half a file, then the power goes
                fn(*args, **kwargs)
                path = Path(args[writes_path_arg])
                if path.is_file():
                    with open(path, "r+b") as f:
                        f.truncate(path.stat().st_size // 2)
            die()
        return wrapper

    safetensors.torch.save_file = wrap(safetensors.torch.save_file, 1)
    ck.torch.save = wrap(torch.save, 1)
    ck._fsync_file = wrap(ck._fsync_file)
    ck.fsync_dir = wrap(ck.fsync_dir)
    ck.os.replace = wrap(os.replace)
    ck.shutil.rmtree = wrap(ck.shutil.rmtree)

    def on_step(step, loss, info):
        with open(progress, "a") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())

    train(model(), loss_fn, Batches(), config(out), resume=True, callback=on_step)
