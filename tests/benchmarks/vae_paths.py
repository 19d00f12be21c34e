"""Switch a loaded Wan VAE between its CPU fast paths and the plain reference ops, from outside,
so a benchmark can time both in one run (the "before" of core/vae/layers.py's fast paths).

    reference: every CausalConv3d through nn.Conv3d.forward (PyTorch's kernel heuristic) and every
               RMSNorm as F.normalize(x, dim=1) * sqrt(C) * gamma (what the layers did before)
    fast:      the layers as shipped (oneDNN for narrow 3x3 convs, rsqrt RMSNorm)
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from core.vae.layers import CausalConv3d, RMSNorm


def _reference_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1).mul_(norm.scale * norm.gamma)


@contextlib.contextmanager
def reference_paths(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, `module`'s VAE layers run the reference ops; restored afterwards."""
    convs = [m for m in module.modules() if isinstance(m, CausalConv3d)]
    norms = [m for m in module.modules() if isinstance(m, RMSNorm)]
    saved = [m.prefer_onednn for m in convs]
    try:
        for m in convs:
            m.prefer_onednn = False
        for m in norms:
            m.forward = _reference_norm.__get__(m)
        yield
    finally:
        for m, s in zip(convs, saved):
            m.prefer_onednn = s
        for m in norms:
            del m.forward


def paths(module: torch.nn.Module, fast: bool):
    """`reference_paths(module)` when not fast, else a no-op context."""
    return contextlib.nullcontext() if fast else reference_paths(module)
