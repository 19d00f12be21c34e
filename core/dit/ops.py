"""Layers whose parameters may be stored in any dtype and are cast at use.

The DiT takes its layer classes through the constructor (`operations=`), as ComfyUI's models do,
so one model definition runs under any storage/compute policy. `CastOps`, the default, lets a
weight live in bf16 or fp8 (e4m3fn / e5m2) and casts it to the dtype and device of the input at
each call: fp8 halves the memory of bf16 weights, and the matmul still runs in the compute dtype.

The norms compute in float32 (or wider, when the input is float64) and return the input's dtype:
layer statistics in bf16 lose too much precision, which is why the reference runs them in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cast_like(param: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """`param` in the dtype and on the device of `like` (no copy when it already is)."""
    if param is None or (param.dtype == like.dtype and param.device == like.device):
        return param
    return param.to(device=like.device, dtype=like.dtype)


def island_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the numerically sensitive parts: float32, or float64 when computing in it."""
    return torch.promote_types(dtype, torch.float32)


# Casting a whole weight for a handful of input rows would allocate a full-size copy for little
# work: the float32 timestep projection of a 14B model (2 rows through 5120 x 30720) would need
# 630 MB. Such weights are cast and applied in slices of at most this many elements (16 MB fp32).
CAST_SLICE_ELEMENTS = 1 << 22
# Inputs with at most this many rows count as "a handful" (timestep MLPs: one row per timestep).
FEW_ROWS = 64


class CastLinear(nn.Linear):
    """nn.Linear that casts its weight and bias to the input's dtype at use."""

    def reset_parameters(self) -> None:
        # Skipped: the model's initialize_weights() (or a checkpoint) sets every weight; default
        # init of a 14B model on the CPU would cost minutes for nothing.
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        needs_cast = w.dtype != x.dtype or w.device != x.device
        if not needs_cast or w.numel() <= CAST_SLICE_ELEMENTS or x.numel() > FEW_ROWS * x.shape[-1]:
            return F.linear(x, cast_like(w, x), cast_like(self.bias, x))
        step = max(1, CAST_SLICE_ELEMENTS // w.shape[1])                # output features per slice
        b = self.bias
        return torch.cat([F.linear(x, cast_like(w[i:i + step], x),
                                   None if b is None else cast_like(b[i:i + step], x))
                          for i in range(0, w.shape[0], step)], dim=-1)


class CastConv3d(nn.Conv3d):
    """nn.Conv3d that casts its weight and bias to the input's dtype at use."""

    def reset_parameters(self) -> None:
        pass  # see CastLinear.reset_parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_like(self.weight, x), cast_like(self.bias, x))


class CastLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (or wider), returned in the input's dtype."""

    def reset_parameters(self) -> None:
        pass  # see CastLinear.reset_parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(island_dtype(x.dtype))
        out = F.layer_norm(xf, self.normalized_shape, cast_like(self.weight, xf),
                           cast_like(self.bias, xf), self.eps)
        return out.to(x.dtype)


class CastRMSNorm(nn.RMSNorm):
    """RMSNorm computed in float32 (or wider), returned in the input's dtype."""

    def reset_parameters(self) -> None:
        pass  # see CastLinear.reset_parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(island_dtype(x.dtype))
        out = F.rms_norm(xf, self.normalized_shape, cast_like(self.weight, xf), self.eps)
        return out.to(x.dtype)


class CastOps:
    """The default operations: parameters in any storage dtype, cast to the compute dtype at use."""

    Linear = CastLinear
    Conv3d = CastConv3d
    LayerNorm = CastLayerNorm
    RMSNorm = CastRMSNorm
