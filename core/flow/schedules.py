"""Noise schedules for rectified flow, as pure functions returning sigma tensors.

Convention (DESIGN.md): sigma in [0, 1], sigma = 1 is pure noise, sigma = 0 is data, the DiT
timestep is t = 1000 * sigma. Inference schedules are 1-D tensors of N + 1 sigmas, decreasing,
ending in an exact 0 (the k-diffusion shape). They are float64 by default, because the solvers
do their step arithmetic in float64 whatever the latent dtype; pass `dtype=` for another.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000  # the DiT's timestep scale: t = 1000 * sigma


def _check_shift(k: float) -> float:
    k = float(k)
    if not k > 0.0 or k != k or k == float("inf"):
        raise ValueError(f"shift must be a finite number > 0 (1 = no shift, Wan uses 5), got {k}")
    return k


def shift_sigma(sigma: torch.Tensor | float, k: float) -> torch.Tensor | float:
    """The resolution / noise-level shift `k*s / (1 + (k - 1)*s)`.

    Maps [0, 1] onto [0, 1] monotonically, fixing 0 and 1; k > 1 moves every sigma towards 1 (more
    steps at high noise), k = 1 is the identity. Works on floats and on tensors of any shape.
    """
    k = _check_shift(k)
    return k * sigma / (1.0 + (k - 1.0) * sigma)


shift = shift_sigma  # the name DESIGN.md uses


def flow_sigmas(steps: int, shift: float = 1.0, denoise: float = 1.0, *,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The shifted linear inference schedule of DESIGN.md: [N + 1] sigmas ending in 0.

    sigma_i = shift(linspace(denoise, 0, N + 1)[i]) for i < N, then a final 0. With denoise = 1
    the schedule starts at exactly 1 (pure noise); with denoise = d < 1 it starts at shift(d),
    the level to which the input latent must be noised first (see `noise.noise_latent`).

    Example (by hand): steps=4, shift=5 -> [1, 0.9375, 0.8333.., 0.625, 0].
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    d = float(denoise)
    if not 0.0 < d <= 1.0:
        raise ValueError(f"denoise must be in (0, 1] (1 = start from pure noise), got {denoise}")
    raw = torch.linspace(d, 0.0, steps + 1, dtype=torch.float64)[:-1]  # [N]
    sigmas = torch.cat([shift_sigma(raw, shift), raw.new_zeros(1)])  # [N + 1], exact final 0
    return sigmas.to(dtype)


@dataclass(frozen=True)
class TrainingTable:
    """The training-time timestep table (DiffSynth's FlowMatchScheduler, Wan template, training
    mode: `set_timesteps(1000, training=True)`). Training draws an index uniformly and uses the
    sigma and the loss weight stored at that index."""

    sigmas: torch.Tensor     # [N] float64, decreasing from 1 towards 0 (no final 0)
    timesteps: torch.Tensor  # [N] float64, 1000 * sigmas
    weights: torch.Tensor    # [N] float64, bell-shaped loss weights, mean 1 (sum N)

    def weight_at(self, timestep: torch.Tensor) -> torch.Tensor:
        """Loss weight of the table entry nearest to each timestep; [B] (0..1000) -> [B]."""
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1, 1)  # [B, 1]
        idx = (self.timesteps.reshape(1, -1) - t).abs().argmin(dim=1)  # [B]
        return self.weights[idx]


def bell_weights(timesteps: torch.Tensor) -> torch.Tensor:
    """Seed 001's loss weights over a table of timesteps: [N] -> [N] float64.

    y = exp(-2 ((t - 500) / 1000)^2), a bell centred on t = 500; shift it so its minimum is 0 (the
    extreme entries get no weight); normalise so the weights sum to N (1000 for the standard
    table, as in DiffSynth; for other sizes we keep mean 1 rather than DiffSynth's empirical
    rescaling for short tables).
    """
    t = torch.as_tensor(timesteps, dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"timesteps must be a 1-D table of at least 2 entries, got shape {tuple(t.shape)}")
    half = NUM_TRAIN_TIMESTEPS / 2
    y = torch.exp(-2.0 * ((t - half) / NUM_TRAIN_TIMESTEPS) ** 2)
    y = y - y.min()
    total = y.sum()
    if total <= 0:
        raise ValueError("timesteps are all equal: the bell weights would all be zero")
    return y * (t.numel() / total)


def training_table(num_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = 5.0) -> TrainingTable:
    """The shifted training table: sigma_i = shift(linspace(1, 0, N + 1)[i]), i < N (the final 0 is
    dropped: training never uses sigma = 0), timesteps 1000 sigma, and `bell_weights` over them.

    DiffSynth trains Wan with its template default shift 5 (seed 001, section 3.1.2).
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    sigmas = flow_sigmas(num_timesteps, shift=shift)[:-1]  # [N]
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    return TrainingTable(sigmas=sigmas, timesteps=timesteps, weights=bell_weights(timesteps))


def sigma_curve(sigmas: torch.Tensor) -> dict[str, list[float]]:
    """The schedule as plain data for the UI to draw: {"step": [0..N], "sigma": [...],
    "timestep": [1000 sigma ...]}, all Python lists of floats (JSON-ready)."""
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    return {
        "step": [float(i) for i in range(s.numel())],
        "sigma": s.tolist(),
        "timestep": (s * NUM_TRAIN_TIMESTEPS).tolist(),
    }


def weight_curve(table: TrainingTable) -> dict[str, list[float]]:
    """The training table as plain data: {"timestep": [...], "sigma": [...], "weight": [...]}."""
    return {
        "timestep": table.timesteps.tolist(),
        "sigma": table.sigmas.tolist(),
        "weight": table.weights.tolist(),
    }
