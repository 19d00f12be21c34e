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
                 clip_fea: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """options: passed on to the DiT's forward (e.g. `cancel=`; every rank must give the same
        answer to a cancel check, or the others wait in a collective until the timeout)."""
        n, batch = self.mesh.cfg, x.shape[0]
        if n == 1 or batch % n:
            return self.dit(x, t, context, clip_fea, sequence=self.sequence, **options)
        me = self.mesh.cfg_rank

        def part(value):
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
                return value.chunk(n)[me]
            return value                                  # a number, or shared by the whole batch

        local = self.dit(part(x), part(t), part(context), part(clip_fea), sequence=self.sequence,
                         **options)
        halves = [torch.empty_like(local) for _ in range(n)]
        collective("exchange of the guidance passes",
                   lambda: dist.all_gather(halves, local.contiguous(), group=self.mesh.cfg_group))
        return torch.cat(halves, dim=0)


def shard_weights(dit: torch.nn.Module) -> torch.nn.Module:
    """Shard the DiT's weights over all ranks with FSDP2 (`torch.distributed.fsdp.fully_shard`).

    Each rank keeps 1/world of every block's parameters; a block's full weights are gathered just
    before it runs and freed after it, so the resident weights are about 1/world of the model plus
    one block. For models that do not fit one device; it costs one all-gather of each block's
    weights per forward. In place; returns `dit`.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(dit.parameters()).device.type
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    for block in dit.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(dit, mesh=mesh, reshard_after_forward=True)
    return dit
