"""Multi-process inference on torch.distributed: Ulysses sequence parallelism and CFG parallelism.

    mesh = init_mesh(ulysses=2, cfg_parallel=True)     # under `torchrun --nproc_per_node 4`
    dit = ParallelDiT(load_dit(path), mesh)            # same call signature as the DiT
    shard_weights(dit.dit)                              # optional: FSDP2, 1/world of the weights each

Every rank runs the same program on the same seeded inputs; only the DiT's forward is split.
"""
from .mesh import ParallelMesh, RankFailure, close_mesh, init_mesh
from .parallel_dit import ParallelDiT, shard_weights
from .ulysses import SequenceShard

__all__ = ["ParallelMesh", "RankFailure", "close_mesh", "init_mesh", "ParallelDiT", "SequenceShard", "shard_weights"]
