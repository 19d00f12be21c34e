"""The Wan VAE network (either version) and its causal streams over time.

    encode_stream   [B, C, T, H, W] pixels   -> [B, z, F, H/s, W/s] raw latent   T = 4(F-1)+1
    decode_stream   [B, z, F, h, w] raw      -> [B, C, T, h*s, w*s] pixels (unclamped)

Encoding runs the encoder on chunks of 1, 4, 4, ... pixel frames (one latent frame each), decoding
runs the decoder on one latent frame at a time; a `FeatureCache` local to the call carries the
causal past across chunks, and each chunk's result is written into a preallocated output, so the
working memory does not grow with the clip length. `chunked=False` runs the whole clip as one
chunk instead: the plain full causal pass, kept as the reference the streams are tested against.
Inputs are assumed validated (see `vae.WanVAE`); shapes are asserted as invariants only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import VAEConfig
from .layers import CausalConv3d, FeatureCache
from .wan21 import Decoder21, Encoder21
from .wan22 import Decoder22, Encoder22

Progress = Callable[[int, int], None]


class WanVAEModel(nn.Module):
    """Encoder, the 1x1x1 latent convolutions `conv1` / `conv2`, decoder (official key names)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        v21 = config.version == "2.1"
        encoder, decoder = (Encoder21, Decoder21) if v21 else (Encoder22, Decoder22)
        self.encoder = encoder(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = decoder(config)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        return rearrange(x, "b c t (h q) (w r) -> b (c r q) t h w", q=p, r=p) if p > 1 else x

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        return rearrange(x, "b (c r q) t h w -> b c t (h q) (w r)", q=p, r=p) if p > 1 else x

    def _chunks(self, frames: int, first: int, rest: int, chunked: bool) -> Iterator[slice]:
        if not chunked:
            yield slice(0, frames)
            return
        yield slice(0, first)
        for start in range(first, frames, rest):
            yield slice(start, start + rest)

    @torch.no_grad()
    def encode_stream(self, video: torch.Tensor, progress: Progress | None = None,
                      chunked: bool = True, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """[B, C, T, H, W] -> raw latent mean [B, z, F, H/s, W/s], F = (T-1)//4 + 1, in
        `out_dtype` (default: the weights' dtype)."""
        cfg, (b, _, t, h, w) = self.config, video.shape
        ts, s = cfg.temporal_stride, cfg.spatial_stride
        assert (t - 1) % ts == 0 and h % s == 0 and w % s == 0, video.shape
        z = cfg.z_dim
        out = torch.empty(b, z, (t - 1) // ts + 1, h // s, w // s,
                          dtype=out_dtype or self.conv1.weight.dtype, device=video.device)
        cache, done = FeatureCache(), 0
        chunks = list(self._chunks(t, 1, ts, chunked))
        weight, bias = self.conv1.weight[:z], self.conv1.bias[:z]  # only the mean half is used
        for i, frames in enumerate(chunks):
            x = self._patchify(video[:, :, frames].to(weight.dtype))
            mu = F.conv3d(self.encoder(x, cache), weight, bias)   # (B, z, F_chunk, h, w)
            out[:, :, done:done + mu.shape[2]] = mu
            done += mu.shape[2]
            if progress is not None:
                progress(i + 1, len(chunks))
        assert done == out.shape[2], (done, out.shape)
        return out

    @torch.no_grad()
    def decode_stream(self, latent: torch.Tensor, progress: Progress | None = None,
                      chunked: bool = True, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Raw latent [B, z, F, h, w] -> pixels [B, C, 4(F-1)+1, h*s, w*s], not clamped, in
        `out_dtype` (default: the weights' dtype)."""
        cfg, (b, _, f, h, w) = self.config, latent.shape
        ts, s = cfg.temporal_stride, cfg.spatial_stride
        dtype = self.conv2.weight.dtype
        out = torch.empty(b, cfg.image_channels, ts * (f - 1) + 1, h * s, w * s,
                          dtype=out_dtype or dtype, device=latent.device)
        x = self.conv2(latent.to(dtype), FeatureCache())          # 1x1x1: no past needed
        cache, done = FeatureCache(), 0
        chunks = list(self._chunks(f, 1, 1, chunked))
        for i, frames in enumerate(chunks):
            y = self._unpatchify(self.decoder(x[:, :, frames], cache))  # (B, C, T_chunk, H, W)
            out[:, :, done:done + y.shape[2]] = y
            done += y.shape[2]
            del y
            if progress is not None:
                progress(i + 1, len(chunks))
        assert done == out.shape[2], (done, out.shape)
        return out


def random_state_dict(config: VAEConfig, seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in the official key layout: PyTorch's default initialisation, with the
    RMSNorm scales also drawn around 1 so that they are exercised (tests, training from scratch)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanVAEModel(config)
        sd = model.state_dict()
        for key, value in sd.items():
            if key.endswith("gamma"):
                value.mul_(1 + 0.2 * torch.randn_like(value))
    return {k: v.to(dtype) for k, v in sd.items()}
