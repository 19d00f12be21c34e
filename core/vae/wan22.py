"""Wan2.2 encoder and decoder: levels are residual blocks whose shortcut also resamples
(parameter-free AvgDown3D / DupUp3D), on 2x2-patchified pixels (12 channels).

    Encoder (dim 160, mult 1,2,4,4)            Decoder (dim 256)
    conv1        12 -> 160                     conv1        z -> 1024
    level 0      2 res 160, down2d  (+avg)     middle       res, attn, res (1024)
    level 1      2 res 320, down3d  (+avg)     level 0      3 res 1024, up3d (+dup)
    level 2      2 res 640, down3d  (+avg)     level 1      3 res 512,  up3d (+dup)
    level 3      2 res 640          (+avg)     level 2      3 res 256,  up2d (+dup)
    middle       res, attn, res (640)          level 3      3 res 256
    head         640 -> 2z                     head         256 -> 12
"""
from __future__ import annotations

import torch
from torch import nn

from .config import VAEConfig
from .layers import AvgDown3D, CausalConv3d, DecoderStack, DupUp3D, EncoderStack, FeatureCache, \
    Head, Middle, Resample, ResidualBlock


class DownResidualBlock(nn.Module):
    """Residual blocks then an optional down-resample; the input, averaged down, is added back."""

    def __init__(self, in_dim: int, out_dim: int, num_res: int, temporal: bool, spatial: bool):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if spatial else 1)
        blocks: list[nn.Module] = []
        for _ in range(num_res):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if spatial:
            blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = x
        for block in self.downsamples:
            h = block(h, cache)
        return h + self.avg_shortcut(x)


class UpResidualBlock(nn.Module):
    """Residual blocks then an optional up-resample; the input, duplicated up, is added back."""

    def __init__(self, in_dim: int, out_dim: int, num_res: int, temporal: bool, spatial: bool):
        super().__init__()
        self.avg_shortcut = (DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if spatial
                             else None)
        blocks: list[nn.Module] = []
        for _ in range(num_res):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if spatial:
            blocks.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d",
                                   halve_up=False))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = x
        for block in self.upsamples:
            h = block(h, cache)
        return h if self.avg_shortcut is None else h + self.avg_shortcut(x, cache)


class Encoder22(EncoderStack):
    """[B, 12, T, H/2, W/2] patchified chunk -> [B, 2z, T', H/16, W/16]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        n_down = len(cfg.temporal_downsample)
        self.conv1 = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(*(
            DownResidualBlock(dims[i], dims[i + 1], cfg.num_res_blocks,
                              temporal=i < n_down and cfg.temporal_downsample[i],
                              spatial=i < n_down)
            for i in range(len(cfg.dim_mult))))
        self.middle = Middle(dims[-1])
        self.head = Head(dims[-1], cfg.z_dim * 2)


class Decoder22(DecoderStack):
    """[B, z, F, h, w] chunk -> [B, 12, T, 8h, 8w] (unpatchified to 16h x 16w by the caller)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dec_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = cfg.temporal_downsample[::-1]
        n_up = len(temporal_up)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = Middle(dims[0])
        self.upsamples = nn.Sequential(*(
            UpResidualBlock(dims[i], dims[i + 1], cfg.num_res_blocks + 1,
                            temporal=i < n_up and temporal_up[i], spatial=i < n_up)
            for i in range(len(mult))))
        self.head = Head(dims[-1], cfg.in_channels)
