"""Wan2.1 encoder and decoder: one flat sequence of residual and resample blocks per side.

    Encoder (dim 96, mult 1,2,4,4)          Decoder
    conv1        3 -> 96                    conv1        z -> 384
    level 0      2 res 96,  down2d          middle       res, attn, res (384)
    level 1      2 res 192, down3d (t/2)    level 0      3 res 384, up3d (t*2) -> 192
    level 2      2 res 384, down3d (t/2)    level 1      3 res 384, up3d (t*2) -> 192
    level 3      2 res 384                  level 2      3 res 192, up2d      -> 96
    middle       res, attn, res (384)       level 3      3 res 96
    head         384 -> 2z                  head         96 -> 3
"""
from __future__ import annotations

from torch import nn

from .config import VAEConfig
from .layers import CausalConv3d, DecoderStack, EncoderStack, Head, Middle, Resample, ResidualBlock


class Encoder21(EncoderStack):
    """[B, 3, T, H, W] chunk -> [B, 2z, T', H/8, W/8] (mean and log-variance)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(cfg.temporal_downsample):
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                blocks.append(Resample(out_dim, mode))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = Middle(dims[-1])
        self.head = Head(dims[-1], cfg.z_dim * 2)


class Decoder21(DecoderStack):
    """[B, z, F, h, w] chunk -> [B, 3, T, 8h, 8w]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dec_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = Middle(dims[0])
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous level's up-sampling conv halved the width
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(temporal_up):
                blocks.append(Resample(out_dim, "upsample3d" if temporal_up[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = Head(dims[-1], cfg.in_channels)
