"""3D rotary position embedding (RoPE) over (frame, height, width) token positions.

Each attention head's channels are grouped in adjacent pairs (2k, 2k+1); each pair is rotated by
an angle `position · ω`. The pairs are split between the three axes as the Wan checkpoints expect:
height and width get `Dh // 6` pairs each, the frame axis the rest (Dh = 128: 22 / 21 / 21 pairs,
i.e. 44 / 42 / 42 channels). Within an axis of `a` channels, pair k turns at ω_k = θ^(-2k / a).

Because a rotation by (p·ω) on q and by (p'·ω) on k leaves q·k depending on p − p' only, attention
scores depend on relative positions only.
"""
from __future__ import annotations

from types import MappingProxyType

import torch
from einops import rearrange

COMPLEX_OF = MappingProxyType({torch.float32: torch.complex64, torch.float64: torch.complex128})
REAL_OF = MappingProxyType({torch.complex64: torch.float32, torch.complex128: torch.float64})


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to the (frame, height, width) axes."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def grid_positions(frames: int, height: int, width: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Integer (f, h, w) positions of the tokens of a patch grid, f-major: [L, 3]."""
    f, h, w = torch.meshgrid(torch.arange(frames, device=device), torch.arange(height, device=device),
                             torch.arange(width, device=device), indexing="ij")
    return rearrange(torch.stack([f, h, w], dim=-1), "F H W three -> (F H W) three")


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float = 10000.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The rotations as unit complex numbers e^(i·angle): [L, 1, Dh/2] (the 1 broadcasts over heads).

    positions: [L, 3] (may be fractional or shifted). Angles are computed in float64 since
    positions times frequencies reach the hundreds; `dtype` is the real dtype the rotation runs in
    (float32, or float64 for a float64 model).
    """
    angles = []
    for axis, axis_dim in enumerate(rope_axes_dims(head_dim)):
        k = torch.arange(0, axis_dim, 2, device=positions.device, dtype=torch.float64)
        omega = theta ** (-k / axis_dim)                                # [a/2]
        angles.append(positions[:, axis, None].to(torch.float64) * omega)  # [L, a/2]
    angle = rearrange(torch.cat(angles, dim=1), "L P -> L 1 P")         # [L, 1, Dh/2]
    return torch.polar(torch.ones_like(angle), angle).to(COMPLEX_OF[dtype])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2k, 2k+1) of x [B, L, Nh, Dh] by `rope`; same shape and dtype.

    A pair is read as the complex number x_2k + i·x_2k+1 and multiplied by e^(i·angle), in the
    precision of the tables (float32 or wider), then cast back.
    """
    real = x.to(REAL_OF[rope.dtype]).contiguous()
    pairs = torch.view_as_complex(rearrange(real, "B L Nh (P two) -> B L Nh P two", two=2))
    rotated = torch.view_as_real(pairs * rope)                          # [B, L, Nh, Dh/2, 2]
    return rearrange(rotated, "B L Nh P two -> B L Nh (P two)").to(x.dtype)
