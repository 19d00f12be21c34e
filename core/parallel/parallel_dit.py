"""A DiT split over a ParallelMesh, with the DiT's own call signature.

`ParallelDiT(dit, mesh)(x, t, context, clip_fea)` returns on every rank what `dit(...)` returns on
one: the same model object does the work (one code path); this layer only decides which part of
the batch (CFG parallel) and which tokens (Ulysses) each rank computes, and gathers the results.

CFG parallel: the sampler's batched guidance calls the DiT on [x; x] with [positive; negative]
contexts; with a cfg axis of 2, rank column c computes batch half c and the halves are exchanged.
A batch that does not split (e.g. cfg = 1, one pass) is computed whole on every column.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .mesh import ParallelMesh, check_heads, collective
from .ulysses import SequenceParallel


class ParallelDiT:
    """Wraps a WanDiT-like module whose forward takes `sequence=` (see core/dit/model.py)."""

    def __init__(self, dit: torch.nn.Module, mesh: ParallelMesh) -> None:
        check_heads(dit.config.num_heads, mesh.ulysses)
        self.dit, self.mesh = dit, mesh
        self.sequence = SequenceParallel(mesh.ulysses_group) if mesh.ulysses > 1 else None

    def __getattr__(self, name: str) -> Any:        # config, compute_dtype, ... of the DiT
        return getattr(self.__dict__["dit"], name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
                 clip_fea: torch.Tensor | None = None) -> torch.Tensor:
        n, batch = self.mesh.cfg, x.shape[0]
        if n == 1 or batch % n:
            return self.dit(x, t, context, clip_fea, sequence=self.sequence)
        me = self.mesh.cfg_rank

        def part(value):
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
                return value.chunk(n)[me]
            return value                                  # a number, or shared by the whole batch

        local = self.dit(part(x), part(t), part(context), part(clip_fea), sequence=self.sequence)
        halves = [torch.empty_like(local) for _ in range(n)]
        collective("exchange of the guidance passes",
                   lambda: dist.all_gather(halves, local.contiguous(), group=self.mesh.cfg_group))
        return torch.cat(halves, dim=0)
