"""Seeded initial noise and forward noising x_sigma = (1 - sigma) x0 + sigma eps.

Noise is always drawn on the CPU in float32 from a private `torch.Generator`, then moved to the
requested device and dtype: the same seed gives the same noise (hence the same video) on any
device and for any compute dtype, and sampling never touches the global RNG.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF  # torch.Generator.manual_seed accepts the full uint64 range


def initial_noise(shape: Sequence[int], seed: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of `shape` (e.g. [B, C, F, H, W]) for `seed` in [0, 2^64 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"noise shape must be non-negative, got {shape}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
    return eps.to(device=device if device is not None else "cpu", dtype=dtype)


def noise_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps; x0, noise [B, C, F, H, W] -> same shape.

    Used to start sampling at sigma_0 < 1 (denoise < 1, video-to-video) and by training. At
    sigma = 1 this returns the noise itself (bit for bit), whatever x0 holds.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"latent {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    s = float(sigma) if not torch.is_tensor(sigma) or sigma.numel() == 1 else None
    if s is None:  # per-sample sigma [B]
        s_b = sigma.to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return (1 - s_b) * x0 + s_b * noise.to(x0.dtype)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"sigma must be in [0, 1], got {s}")
    if s == 1.0:
        return noise.to(device=x0.device, dtype=x0.dtype).clone()
    return (1.0 - s) * x0 + s * noise.to(device=x0.device, dtype=x0.dtype)
