"""torch.compile for the DiT, one transformer block at a time (regional compilation).

    compile_blocks(dit)            # in place; returns dit. The first forward compiles (seconds).

Every block of a Wan DiT runs the same code on differently valued weights, so compiling the
block's forward once serves all N layers: `torch.compile` traces `WanBlock.forward` with the
block's parameters as graph inputs (dynamo inlines built-in nn.Modules and does not bake their
weights in), and the one graph is reused by every layer. Compile time is that of one block, not
of the whole network (the recipe of PyTorch's regional-compilation tutorial, and what ComfyUI's
and the Wan wrappers' compile nodes do). The embeddings, RoPE tables and head stay eager: they run
once per forward and are cheap.

What does not recompile, by construction (and checked in tests/test_dit_compile.py):
- the timestep (a tensor input, also per-token timesteps: an index tensor of either width);
- CFG passes (batch 2B with batched CFG, or two calls of batch B: one more graph at most, for the
  other batch size, then dynamic);
- a new LoRA strength when the LoRA is merged into the weights or patched by ComfyUI (weights
  are graph inputs). Run-time adapters (`core.train.lora`, mode "runtime") keep their strength as
  a Python float: dynamo specialises on it until it first changes and then makes it dynamic, so
  the first change costs one more graph per CFG layout and later changes none (strength 0, which
  skips the adapter, is one graph of its own).
- a new resolution or frame count: the first change recompiles once with the token count marked
  dynamic (dynamo's automatic dynamic shapes), after which any further size runs the same graph.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# dynamo keeps at most this many graphs per code object before falling back to eager; one block
# needs a handful (static first shape, dynamic shapes, batch 1 vs 2, each LoRA-adapter layout).
CACHE_SIZE_LIMIT = 16


def compile_blocks(dit: nn.Module, *, backend: str = "inductor", mode: str | None = None,
                   dynamic: bool | None = None) -> nn.Module:
    """Compile each block of `dit` (a WanDiT: `dit.blocks`) in place and return `dit`.

    backend/mode: as for `torch.compile` ("inductor", "aot_eager", ...; mode "max-autotune"
    etc.). dynamic: None (default) starts static and turns a changed size dynamic on the first
    change; True compiles dynamic from the start; False recompiles per size. Idempotent: blocks
    compiled already are left as they are. Nothing is compiled until the first forward.
    """
    blocks = getattr(dit, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(f"compile_blocks needs a DiT with a `blocks` ModuleList (a WanDiT), got "
                        f"{type(dit).__name__}")
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"unknown torch.compile backend {backend!r}; choose one of "
                         f"{torch._dynamo.list_backends()}")
    limit = torch._dynamo.config.cache_size_limit
    torch._dynamo.config.cache_size_limit = max(limit, CACHE_SIZE_LIMIT)
    for block in blocks:
        if not is_compiled(block):
            block.compile(backend=backend, mode=mode, dynamic=dynamic)
    log.info("compiled %d DiT blocks (backend %s); the first forward compiles", len(blocks), backend)
    return dit


def is_compiled(module: nn.Module) -> bool:
    """Whether `module.compile()` has been called on this module (its forward is compiled)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def blocks_compiled(dit: nn.Module) -> bool:
    """Whether every block of `dit` is compiled."""
    blocks = getattr(dit, "blocks", None)
    return bool(blocks) and all(is_compiled(b) for b in blocks)
