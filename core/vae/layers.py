"""Building blocks of the Wan causal 3D VAE, shared by Wan2.1 and Wan2.2.

Every block takes `(x, cache)`: x is one temporal chunk [B, C, T, H, W] and `cache` is the
`FeatureCache` of the current encode/decode call. Processing a clip in consecutive chunks with one
cache gives the same result as processing it in one chunk with a fresh cache (the full causal pass):
the cache carries exactly the past frames each causal convolution needs across chunk boundaries.
Attribute names equal the official checkpoint keys (`residual.0.gamma`, `time_conv.weight`, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


class FeatureCache:
    """What one causal stream remembers between chunks, keyed by the module that owns the entry.

    Created fresh for each encode/decode call (and each spatial tile) and dropped with it; nothing
    is kept on the modules, so one model can serve several calls and threads at once.
    """

    def __init__(self):
        self._past: dict[nn.Module, torch.Tensor] = {}
        self._started: set[nn.Module] = set()

    def past(self, owner: nn.Module) -> torch.Tensor | None:
        """The frames `owner` stored after the previous chunk, or None on the first chunk."""
        return self._past.get(owner)

    def store(self, owner: nn.Module, frames: torch.Tensor) -> None:
        # A copy, so the chunk's large activation is not kept alive by a view into it.
        self._past[owner] = frames.clone()

    def first_chunk(self, owner: nn.Module) -> bool:
        """True the first time `owner` asks in this stream, False afterwards."""
        if owner in self._started:
            return False
        self._started.add(owner)
        return True


# CPU float32 convolutions with a spatial kernel (3x3) and fewer input channels than this take
# oneDNN's kernel directly (see `onednn_conv3d`); the others keep PyTorch's own choice. Measured
# with tests/benchmarks/bench_conv_path.py, 1 thread, batch 1, where PyTorch picks slow_conv3d
# (two sweeps): 3x3x3 at C <= 128 oneDNN is 1.5-25x faster from 16x16 up and even at 8x8 (except
# C = 8-16 on 8x8 single frames, 0.05 vs 0.07 ms); at C = 256 it is mixed (0.8-2.3, slow_conv3d
# ahead on 8x8 single frames), at C >= 384 slow_conv3d is 1.6-1.9x faster on 8x8, even above. Kernels 3x1x1 / 1x1x1 (time convs, shortcuts) are plain GEMMs for slow_conv3d
# (no im2col), which beats oneDNN's fixed cost at the VAE's sizes, so they are left alone.
ONEDNN_MAX_CHANNELS = 256


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN (mkldnn) and it is not switched off by the user."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def onednn_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: tuple[int, int, int], padding: tuple[int, int, int]) -> torch.Tensor:
    """F.conv3d(x, weight, bias, stride, padding) through oneDNN's kernel.

    F.conv3d picks the kernel per call from a size heuristic: on the CPU a batch-1 input with
    N*C*T*H <= 20480, or a kernel of spatial size 1x1 on one thread, goes to `slow_conv3d`
    (im2col + one GEMM per sample), up to 25x slower than oneDNN at the VAE's narrow widths.
    `aten::mkldnn_convolution` is the operator F.conv3d itself dispatches to otherwise (same
    result up to summation order, with autograd), called here without the heuristic.
    """
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride),
                                             [1, 1, 1], 1)


class CausalConv3d(nn.Conv3d):
    """Conv3d that sees only the present and the past in time.

    `padding=(pt, ph, pw)` is read as the total padding of an ordinary symmetric conv: the 2*pt
    temporal frames all go on the past side (zeros before the clip, cached frames afterwards);
    spatial padding stays symmetric (zeros), done by the convolution itself.

    On the CPU in float32, a layer with a spatial kernel and fewer than ONEDNN_MAX_CHANNELS input
    channels runs oneDNN's kernel (`onednn_conv3d`); the choice is made once per layer, here, from
    its shape (the device and dtype are checked per call, since the layer can be moved).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, ph, pw))
        self.past_frames = 2 * pt
        self.prefer_onednn = (in_channels < ONEDNN_MAX_CHANNELS
                              and max(self.kernel_size[1:]) > 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.past_frames:
            past = cache.past(self)
            parts = [x] if past is None else [past, x]
            missing = self.past_frames - (0 if past is None else past.shape[2])
            if missing > 0:  # before the clip's start: zeros (never stored in the cache)
                b, c, _, h, w = x.shape
                parts.insert(0, x.new_zeros(b, c, missing, h, w))
            x = torch.cat(parts, dim=2)                     # (B, C, past_frames + T, H, W)
            real = x.shape[2] - max(missing, 0)
            cache.store(self, x[:, :, x.shape[2] - min(real, self.past_frames):])
        if (self.prefer_onednn and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and onednn_available()):
            return onednn_conv3d(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma; gamma is [C,1,1,1] for 5D input, [C,1,1] for 4D.

    Written as x * rsqrt(mean_C(x^2) + eps) * gamma, the same value as the reference's
    F.normalize(x, dim=1) * sqrt(C) * gamma (whose max(||x||, 1e-12) guard becomes eps = 1e-24/C;
    an all-zero vector stays zero), in three passes over x instead of five. Half precision keeps
    F.normalize, whose norm is accumulated in float32 (x^2 would overflow float16).
    """

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim ** 0.5
        self.eps = 1e-24 / dim
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.float64):
            # x / sqrt(mean(x^2)) = x / ||x|| * sqrt(C): the scale is already in.
            inv = x.square().mean(dim=1, keepdim=True).add_(self.eps).rsqrt_()  # (B, 1, ...)
            return (x * inv).mul_(self.gamma)
        # In place on normalize's fresh output (division does not save it for backward).
        return F.normalize(x, dim=1).mul_(self.scale * self.gamma)


def norm_silu(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """SiLU(norm(x)); in place when no gradient is recorded (SiLU's backward needs its input),
    which saves one activation-sized buffer per call."""
    return F.silu(norm(x), inplace=not torch.is_grad_enabled())


class ResidualBlock(nn.Module):
    """norm-SiLU-conv3 twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # Indices follow the checkpoint keys; index 5 is the reference's Dropout(p=0).
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        r = self.residual
        # One rebinding per step, so each intermediate is freed as soon as it is used up.
        h = r[2](norm_silu(r[0], x), cache)                  # (B, out, T, H, W)
        h = norm_silu(r[3], h)
        h = r[6](h, cache)                                   # (B, out, T, H, W)
        return h.add_(x if self.shortcut is None else self.shortcut(x, cache))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (no mixing in time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.to_qkv(self.norm(rearrange(x, "b c t h w -> (b t) c h w")))  # (B*T, 3C, H, W)
        q, k, v = rearrange(y, "n (three c) h w -> three n 1 (h w) c", three=3)  # (B*T, 1, L, C)
        y = F.scaled_dot_product_attention(q, k, v)                          # (B*T, 1, L, C)
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=h))
        return x + rearrange(y, "(b t) c h w -> b c t h w", b=b)


class Resample(nn.Module):
    """Spatial x2 up/down-sampling, optionally with a causal x2 in time.

        mode          spatial                          time
        downsample2d  zero-pad right/bottom, conv s2   -
        downsample3d  same                             frame 0 kept; then conv k3 s2 over time
        upsample2d    nearest x2, conv3x3              -
        upsample3d    same                             frame 0 kept; then each frame -> 2 frames
                                                       (causal conv to 2C channels, interleaved)

    The time rules reproduce the reference stream exactly: in the decoder, the first frame of the
    stream is passed through and is *not* part of the time conv's past (the past of frame 1 is
    zeros); in the encoder, frame 0 is kept and latent frame j>=1 sees frames 2j-2 .. 2j.
    Wan2.1's up-sampling conv halves the width (`halve_up=True`); Wan2.2's keeps it.
    """

    def __init__(self, dim: int, mode: str, halve_up: bool = True):
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("up"):
            out = dim // 2 if halve_up else dim
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, out, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)),
                                          nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_time(x, cache)                  # (B, C, T', H, W)
        b = x.shape[0]
        x = self.resample(rearrange(x, "b c t h w -> (b t) c h w"))
        x = rearrange(x, "(b t) c h w -> b c t h w", b=b)    # (B, C', T', H*2 or H/2, ...)
        if self.mode == "downsample3d":
            x = self._halve_time(x, cache)
        return x

    def _double_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        kept = x[:, :, :0]
        if cache.first_chunk(self):
            kept, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2] == 0:
            return kept
        y = self.time_conv(x, cache)                          # (B, 2C, T, H, W)
        y = rearrange(y, "b (two c) t h w -> b c (t two) h w", two=2)
        return torch.cat([kept, y], dim=2) if kept.shape[2] else y

    def _halve_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        past = cache.past(self)
        cache.store(self, x[:, :, -1:])
        if past is not None:
            return self.time_conv(torch.cat([past, x], dim=2), cache)
        assert x.shape[2] % 2 == 1, "a stream's first chunk holds an odd number of frames"
        if x.shape[2] == 1:
            return x
        return torch.cat([x[:, :, :1], self.time_conv(x, cache)], dim=2)


class AvgDown3D(nn.Module):
    """Parameter-free Wan2.2 shortcut: fold (ft, fs, fs) blocks into channels, then average groups
    of channels down to `out_channels`. Time is zero-padded at the front to a multiple of ft."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        folded = in_channels * factor_t * factor_s * factor_s
        if folded % out_channels:
            raise ValueError(f"AvgDown3D: {folded} channels do not split into {out_channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
        x = rearrange(x, "b c (t ft) (h hs) (w ws) -> b (c ft hs ws) t h w", ft=ft, hs=fs, ws=fs)
        return rearrange(x, "b (o g) t h w -> b o g t h w", o=self.out_channels).mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free Wan2.2 shortcut: repeat channels, unfold them into (ft, fs, fs) blocks. On a
    stream's first chunk the first ft-1 frames are dropped (the first latent frame is one frame)."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        unfolded = out_channels * factor_t * factor_s * factor_s
        if unfolded % in_channels:
            raise ValueError(f"DupUp3D: {unfolded} channels are no multiple of {in_channels}")
        self.repeats = unfolded // in_channels

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = repeat(x, "b c t h w -> b (c r) t h w", r=self.repeats)
        x = rearrange(x, "b (c ft hs ws) t h w -> b c (t ft) (h hs) (w ws)", ft=ft, hs=fs, ws=fs)
        return x[:, :, ft - 1:] if cache.first_chunk(self) else x


class Middle(nn.Sequential):
    """Residual block, spatial attention, residual block (keys `middle.0` .. `middle.2`)."""

    def __init__(self, dim: int):
        super().__init__(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        for block in self:
            x = block(x, cache)
        return x


class Head(nn.Sequential):
    """norm, SiLU, causal conv3 to the output channels (keys `head.0.gamma`, `head.2.weight`)."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__(RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out_channels, 3, padding=1))

    def norm_act(self, x: torch.Tensor) -> torch.Tensor:
        return norm_silu(self[0], x)

    def conv(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        # Called as two steps by the encoders/decoders, so that they can drop their reference
        # to the block output before the convolution allocates.
        return self[2](x, cache)


class EncoderStack(nn.Module):
    """The forward pass both Wan encoders share: conv1, the down-sampling blocks, middle, head.
    Subclasses build `conv1`, `downsamples`, `middle` and `head` under the checkpoint key names."""

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in self.downsamples:
            x = block(x, cache)
        x = self.head.norm_act(self.middle(x, cache))
        return self.head.conv(x, cache)


class DecoderStack(nn.Module):
    """The forward pass both Wan decoders share: conv1, middle, the up-sampling blocks, head.
    Subclasses build `conv1`, `middle`, `upsamples` and `head` under the checkpoint key names."""

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.middle(self.conv1(x, cache), cache)
        for block in self.upsamples:
            x = block(x, cache)
        x = self.head.norm_act(x)
        return self.head.conv(x, cache)
