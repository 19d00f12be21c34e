"""3D rotary position embedding (RoPE) over (frame, height, width) token positions.

Each attention head's channels are grouped in adjacent pairs (2k, 2k+1); each pair is rotated by
an angle `position · ω`. The pairs are split between the three axes as the Wan checkpoints expect:
height and width get `Dh // 6` pairs each, the frame axis the rest (Dh = 128: 22 / 21 / 21 pairs,
i.e. 44 / 42 / 42 channels). Within an axis of `a` channels, pair k turns at ω_k = θ^(-2k / a).

Because a rotation by (p·ω) on q and by (p'·ω) on k leaves q·k depending on p − p' only, attention
scores depend on relative positions only.
"""
from __future__ import annotations

import torch
from einops import rearrange


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
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each [L, 1, Dh/2] (the 1 broadcasts over heads).

    positions: [L, 3] (may be fractional or shifted). Angles are computed in float64 (float32 on
    devices without it) since positions times frequencies reach the hundreds.
    """
    wide = torch.float32 if positions.device.type == "mps" else torch.float64
    angles = []
    for axis, axis_dim in enumerate(rope_axes_dims(head_dim)):
        k = torch.arange(0, axis_dim, 2, device=positions.device, dtype=wide)
        omega = theta ** (-k / axis_dim)                                # [a/2]
        angles.append(positions[:, axis, None].to(wide) * omega)        # [L, a/2]
    angle = rearrange(torch.cat(angles, dim=1), "L P -> L 1 P")         # [L, 1, Dh/2]
    return angle.cos().to(dtype), angle.sin().to(dtype)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate the channel pairs of x [B, L, Nh, Dh] by the angles of `rope`; same shape and dtype.

    The rotation runs in the dtype of the tables (float32 or wider).
    """
    cos, sin = rope
    pairs = rearrange(x.to(cos.dtype), "B L Nh (P two) -> B L Nh P two", two=2)
    x0, x1 = pairs.unbind(-1)                                           # [B, L, Nh, Dh/2] each
    rotated = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return rearrange(rotated, "B L Nh P two -> B L Nh (P two)").to(x.dtype)
