"""Timesteps: the sinusoidal embedding, and per-sample or per-token timesteps.

The DiT accepts one timestep per sample ([B]) or one per token ([B, L]; Wan2.2 TI2V gives the
clean first-frame tokens t = 0). Per-token embeddings are not materialised per token: the distinct
timestep values are embedded once ([U, ...], U is tiny: usually 1 or 2) and every token keeps an
index into that table, so a 30k-token video costs no 30k-row modulation tensors up front.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from einops import repeat


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] timesteps (0..1000 scale) -> [N, dim] = [cos(t·ω_k), sin(t·ω_k)], ω_k = max_period^(-k/(dim/2)).

    Computed in float64 as the reference does (t·ω reaches 1000, where float32 rounding shows);
    float32 on devices without float64.
    """
    wide = torch.float32 if t.device.type == "mps" else torch.float64
    half = dim // 2
    omega = max_period ** (-torch.arange(half, device=t.device, dtype=wide) / half)  # [dim/2]
    angle = t.to(wide)[:, None] * omega                                  # [N, dim/2]
    return torch.cat([angle.cos(), angle.sin()], dim=1)


class TokenTimes(NamedTuple):
    """A per-token lookup: `table` rows are per distinct timestep, `index` [B, Lt] says which row
    each token uses (Lt = 1 when the timestep is per sample, then it broadcasts over tokens)."""

    table: torch.Tensor   # [U, ..., D]
    index: torch.Tensor   # [B, Lt] int64

    def pick(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [U, D] -> [B, Lt, D]: each token's row."""
        return rows[self.index]

    def with_table(self, table: torch.Tensor) -> "TokenTimes":
        return TokenTimes(table, self.index)


def check_timesteps(t: torch.Tensor | float, batch: int, frames: int, tokens: int) -> torch.Tensor:
    """Validate t and return it as [B] or [B, L].

    Accepts a number or 0-dim tensor (same t for all), [B] (per sample), [B, L] (per token, tokens
    f-major), or [B, F] (per latent frame, as ComfyUI passes Wan2.2 timesteps), which is expanded
    to per token.
    """
    if not isinstance(t, torch.Tensor):
        if isinstance(t, (int, float)):
            t = torch.tensor(float(t))
        else:
            raise TypeError(f"t must be a tensor of timesteps in the 0..1000 scale, got {type(t).__name__}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"t must hold numbers (timesteps 0..1000), got dtype {t.dtype}")
    if t.ndim == 0:
        return t.expand(batch)
    if t.ndim == 1 and t.shape[0] == batch:
        return t
    if t.ndim == 2 and t.shape[0] == batch and t.shape[1] == tokens:
        return t
    if t.ndim == 2 and t.shape[0] == batch and t.shape[1] == frames:
        return repeat(t, "B F -> B (F S)", S=tokens // frames)
    raise ValueError(
        f"t has shape {list(t.shape)}, but this input needs [B] = [{batch}] (one timestep per "
        f"sample), [B, L] = [{batch}, {tokens}] (one per token) or [B, F] = [{batch}, {frames}] "
        f"(one per latent frame); timesteps are 1000·σ, in 0..1000")


def token_times(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct timestep values [U] and each token's index into them [B, Lt] (Lt = 1 or L)."""
    if t.ndim == 1:
        return t, torch.arange(t.shape[0], device=t.device)[:, None]
    values, index = torch.unique(t, return_inverse=True)
    return values, index
