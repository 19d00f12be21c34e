"""Patchify / unpatchify: a latent video [B, C, F, H, W] and its token sequence [B, L, pf·ph·pw·C].

Tokens are ordered f-major, then h, then w (L = F/pf · H/ph · W/pw). Within a token the channels
are ordered (pf, ph, pw, C), the layout the checkpoints' `head.head` produces. (The input side uses
the `patch_embedding` Conv3d, which is the same linear map on (C, pf, ph, pw)-ordered patches.)
"""
from __future__ import annotations

import torch
from einops import rearrange


def token_grid(shape: tuple[int, ...], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """(F/pf, H/ph, W/pw) for a [B, C, F, H, W] shape; the sizes must divide (checked by callers)."""
    _, _, frames, height, width = shape
    assert frames % patch[0] == 0 and height % patch[1] == 0 and width % patch[2] == 0, (shape, patch)
    return frames // patch[0], height // patch[1], width // patch[2]


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, L, pf·ph·pw·C]."""
    pf, ph, pw = patch
    return rearrange(x, "B C (F pf) (H ph) (W pw) -> B (F H W) (pf ph pw C)", pf=pf, ph=ph, pw=pw)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int],
               patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, L, pf·ph·pw·C] -> [B, C, F·pf, H·ph, W·pw] for a token grid (F, H, W)."""
    (f, h, w), (pf, ph, pw) = grid, patch
    return rearrange(tokens, "B (F H W) (pf ph pw C) -> B C (F pf) (H ph) (W pw)",
                     F=f, H=h, W=w, pf=pf, ph=ph, pw=pw)
