"""The process layout of a parallel generation: `world = cfg × ulysses` ranks.

Global rank r sits at cfg index `r // ulysses` and sequence index `r % ulysses`:

    ulysses 2, cfg 2:   rank 0 (cond, tokens 1/2)   rank 1 (cond, tokens 2/2)
                        rank 2 (uncond, tokens 1/2) rank 3 (uncond, tokens 2/2)

The ranks of one row split one sequence (Ulysses all-to-all); the ranks of one column exchange
the conditional and unconditional velocities (CFG parallel). Collectives of this package go through
`collective`, so a rank that dies or hangs surfaces on the others as `RankFailure` with a message,
within the process group's timeout, instead of a hang or a raw backend trace.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# How long a collective waits for the other ranks before every rank gives up. Generous next to
# one DiT block on a slow rank (minutes on a CPU at large sizes), short next to "forever".
DEFAULT_TIMEOUT_S = 600.0


class RankFailure(RuntimeError):
    """Another rank died, hung past the timeout or failed; this rank cannot go on."""


@dataclass(frozen=True)
class ParallelMesh:
    """Where this process sits in the (cfg × ulysses) layout, with the process groups it uses."""

    ulysses: int                 # ranks that split one token sequence (1: no sequence parallelism)
    cfg: int                     # 2 when cond and uncond passes run on different ranks, else 1
    rank: int                    # this process's global rank
    ulysses_group: Any = None    # process group of this rank's row (None when ulysses == 1)
    cfg_group: Any = None        # process group of this rank's column (None when cfg == 1)

    @property
    def world(self) -> int:
        return self.ulysses * self.cfg

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.ulysses

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes files and prints results; the others write nothing."""
        return self.rank == 0


def check_layout(world: int, ulysses: int, cfg_parallel: bool) -> None:
    """ValueError unless `world` ranks are exactly `ulysses × (2 if cfg_parallel else 1)`."""
    if not isinstance(ulysses, int) or ulysses < 1:
        raise ValueError(f"--ulysses must be a whole number >= 1, got {ulysses!r}")
    need = ulysses * (2 if cfg_parallel else 1)
    if world != need:
        how = f"--ulysses {ulysses}" + (" × 2 for --cfg-parallel" if cfg_parallel else "")
        raise ValueError(f"{world} processes were started but {how} needs exactly {need}; start "
                         f"it with `torchrun --nproc_per_node {need} -m core generate ...` or change "
                         f"--ulysses / --cfg-parallel to fit {world}")


def check_heads(num_heads: int, ulysses: int) -> None:
    """ValueError unless the heads split evenly over the Ulysses ranks."""
    if num_heads % ulysses:
        fits = [n for n in range(1, num_heads + 1) if num_heads % n == 0 and n <= 16]
        raise ValueError(f"Ulysses parallelism splits the attention heads over the ranks, but this "
                         f"model's {num_heads} heads do not divide by --ulysses {ulysses}; use one "
                         f"of {fits}")


def collective(what: str, fn: Callable[[], T]) -> T:
    """Run one collective; a backend error (a dead or stuck peer) becomes RankFailure."""
    try:
        return fn()
    except RuntimeError as err:  # gloo and NCCL raise RuntimeError subclasses (DistBackendError)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise RankFailure(f"rank {rank}: the {what} with the other ranks failed ({first}); another "
                          f"rank probably died or is stuck, so this one stops too") from err


def init_mesh(ulysses: int = 1, cfg_parallel: bool = False, *,
              timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> ParallelMesh:
    """Join (or start) the default process group and build the row and column groups.

    Under torchrun the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) says where this process
    is; an already initialised default group is used as it is. NCCL when CUDA is available, gloo
    on CPUs (unless `backend` says otherwise).
    """
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; parallel generation needs it")
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            check_layout(1, ulysses, cfg_parallel)
            return ParallelMesh(ulysses=1, cfg=1, rank=0)
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    world, rank = dist.get_world_size(), dist.get_rank()
    check_layout(world, ulysses, cfg_parallel)
    cfg = 2 if cfg_parallel else 1
    rows = [list(range(c * ulysses, (c + 1) * ulysses)) for c in range(cfg)]
    cols = [list(range(u, world, ulysses)) for u in range(ulysses)]
    # Every rank creates every group, in the same order (a torch.distributed rule).
    row_groups = [dist.new_group(r) for r in rows] if ulysses > 1 else [None] * cfg
    col_groups = [dist.new_group(c) for c in cols] if cfg > 1 else [None] * ulysses
    return ParallelMesh(ulysses=ulysses, cfg=cfg, rank=rank,
                        ulysses_group=row_groups[rank // ulysses],
                        cfg_group=col_groups[rank % ulysses])


def close_mesh(mesh: ParallelMesh | None, *, wait: bool = True) -> None:
    """Leave the process group cleanly: wait for the other ranks (unless a rank failed), then
    destroy the group. A process that exits with gloo's worker threads still running can abort
    in the C++ runtime ("terminate called without an active exception") and so exit with an
    error after a successful run."""
    if mesh is None or not dist.is_available() or not dist.is_initialized():
        return
    if wait:
        collective("closing barrier", dist.barrier)
    dist.destroy_process_group()
