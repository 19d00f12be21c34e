"""`WanVAE`: the user-facing VAE. Checks inputs, normalises latents, tiles when asked.

    encode      video [B, 3, T, H, W] in [-1, 1] -> normalised latent [B, z, F, H/s, W/s]
    encode_raw  same, raw latent (what ComfyUI's LATENT carries for Wan)
    decode      normalised latent [B, z, F, h, w] -> video [B, 3, T, h*s, w*s] in [-1, 1]
    decode_raw  same, from a raw latent

    T = 4 (F - 1) + 1 (a single image is T = 1, F = 1);  s = 8 (Wan2.1) or 16 (Wan2.2).

Outputs are float32 (float64 for a float64 model) on the model's device. `progress(done, total)`
is called after each temporal chunk (of each tile), for progress bars.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import VAEConfig
from .latent_format import LatentFormat, latent_format_for
from .model import Progress, WanVAEModel
from .tiling import (DECODE_BYTES_PER_PIXEL_CHANNEL, ENCODE_BYTES_PER_PIXEL_CHANNEL, TileSpec,
                     auto_tile, free_memory_bytes, tiled)

Tiling = TileSpec | str | None


def _nearest_multiples(n: int, k: int) -> str:
    lo, hi = n // k * k, -(-n // k) * k
    return f"{lo} or {hi}" if lo and lo != hi else str(hi)


class WanVAE:
    """A loaded Wan VAE (either version). Thread-safe: each call keeps its own caches."""

    def __init__(self, model: WanVAEModel, latent_format: LatentFormat | None = None):
        self.model = model.eval()
        self.config: VAEConfig = model.config
        self.latent_format = latent_format or latent_format_for(self.config.z_dim)
        if self.latent_format.channels != self.config.z_dim:
            raise ValueError(f"latent format {self.latent_format.name} has "
                             f"{self.latent_format.channels} channels, the VAE {self.config.z_dim}")

    # The public, stable attributes.
    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    @property
    def spatial_stride(self) -> int:
        return self.config.spatial_stride

    @property
    def temporal_stride(self) -> int:
        return self.config.temporal_stride

    @property
    def device(self) -> torch.device:
        return self.model.conv2.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.conv2.weight.dtype

    @property
    def _out_dtype(self) -> torch.dtype:
        return torch.promote_types(self.dtype, torch.float32)

    def latent_frames(self, frames: int) -> int:
        """Latent frames for `frames` pixel frames (4n+1 -> n+1)."""
        self._check_frames(frames)
        return (frames - 1) // self.temporal_stride + 1

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames for `latent_frames` latent frames (n+1 -> 4n+1)."""
        return (latent_frames - 1) * self.temporal_stride + 1

    def __repr__(self) -> str:
        return f"WanVAE({self.config}, {self.dtype}, {self.device})"

    # ----- checks -------------------------------------------------------------------------------
    def _check_frames(self, t: int) -> None:
        ts = self.temporal_stride
        if t < 1 or (t - 1) % ts:
            lo = max(1, (t - 1) // ts * ts + 1)
            hi = lo + ts if lo < t else lo
            raise ValueError(f"the VAE takes {ts}n+1 frames (1, {ts + 1}, {2 * ts + 1}, ...), got "
                             f"{t}; use {lo} or {hi} frames")

    def _check_video(self, video: torch.Tensor, pad: bool) -> torch.Tensor:
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"video must be a torch.Tensor, got {type(video).__name__}")
        if video.dim() != 5:
            raise ValueError(f"video must be [B, C, T, H, W] (an image is T=1), got shape "
                             f"{tuple(video.shape)}")
        b, c, t, h, w = video.shape
        if c != self.config.image_channels:
            raise ValueError(f"video has {c} channels, the VAE takes {self.config.image_channels} "
                             f"(shape [B, C, T, H, W] expected, got {tuple(video.shape)})")
        self._check_frames(t)
        s = self.spatial_stride
        if h % s or w % s:
            if not pad:
                raise ValueError(
                    f"height and width must be multiples of {s} for this VAE, got {h}x{w}; use "
                    f"height {_nearest_multiples(h, s)} and width {_nearest_multiples(w, s)}, or "
                    f"pass pad=True to pad (and decode with crop=({h}, {w}))")
            # Replicate the last row/column: fewer edge artefacts than zeros.
            video = F.pad(video.flatten(0, 1), (0, -w % s, 0, -h % s), mode="replicate")
            video = video.unflatten(0, (b, c))
        if not torch.isfinite(video).all():
            raise ValueError("video contains NaN or infinite values")
        return video.to(self.device)

    def _check_latent(self, latent: torch.Tensor) -> torch.Tensor:
        if not isinstance(latent, torch.Tensor):
            raise TypeError(f"latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.dim() != 5:
            raise ValueError(f"latent must be [B, C, F, H, W], got shape {tuple(latent.shape)}")
        if latent.shape[1] != self.latent_channels:
            raise ValueError(
                f"latent has {latent.shape[1]} channels but this VAE ({self.config}) takes "
                f"{self.latent_channels}; a {latent.shape[1]}-channel latent needs the matching "
                f"VAE (16: Wan2.1, 48: Wan2.2)")
        if not torch.isfinite(latent).all():
            raise ValueError("latent contains NaN or infinite values: sampling diverged (try "
                             "fewer/lower CFG, more steps, or a float32/bfloat16 model)")
        return latent.to(self.device)

    def _tile_spec(self, tiling: Tiling, latent_hw: tuple[int, int],
                   decode: bool) -> TileSpec | None:
        if tiling is None or tiling is False:
            return None
        if isinstance(tiling, TileSpec):
            return tiling
        if tiling == "auto":
            width = self.config.dec_dim if decode else self.config.dim
            per = DECODE_BYTES_PER_PIXEL_CHANNEL if decode else ENCODE_BYTES_PER_PIXEL_CHANNEL
            return auto_tile(latent_hw, self.spatial_stride, width, per,
                             torch.finfo(self.dtype).bits // 8, free_memory_bytes(self.device))
        raise ValueError(f"tiling must be None, 'auto' or a TileSpec, got {tiling!r}")

    # ----- encode / decode ----------------------------------------------------------------------
    def encode_raw(self, video: torch.Tensor, *, tiling: Tiling = None, pad: bool = False,
                   progress: Progress | None = None) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> raw latent [B, z, (T-1)//4+1, H/s, W/s].

        pad=True accepts H, W that are not multiples of s: the video is padded at the bottom and
        right (edge pixels repeated) to the next multiple; pass crop=(H, W) to decode."""
        video = self._check_video(video, pad)
        b, _, t, h, w = video.shape
        s, z = self.spatial_stride, self.latent_channels
        grid = (h // s, w // s)
        spec = self._tile_spec(tiling, grid, decode=False)
        if spec is None:
            return self.model.encode_stream(video, progress, out_dtype=self._out_dtype)
        shape = (b, z, self.latent_frames(t), *grid)
        return self._tiled(self.model.encode_stream, video, grid, s, 1, shape, spec, progress)

    def encode(self, video: torch.Tensor, **kwargs) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> normalised latent [B, z, (T-1)//4+1, H/s, W/s].
        Keywords as for `encode_raw`."""
        return self.latent_format.normalize(self.encode_raw(video, **kwargs))

    def decode_raw(self, latent: torch.Tensor, *, tiling: Tiling = None,
                   crop: tuple[int, int] | None = None,
                   progress: Progress | None = None) -> torch.Tensor:
        """raw latent [B, z, F, h, w] -> video [B, 3, 4(F-1)+1, h*s, w*s], clamped to [-1, 1].
        `crop=(H, W)` keeps the top-left H x W pixels (undoing encode's pad=True)."""
        latent = self._check_latent(latent)
        b, _, f, h, w = latent.shape
        s = self.spatial_stride
        spec = self._tile_spec(tiling, (h, w), decode=True)
        if spec is None:
            out = self.model.decode_stream(latent, progress, out_dtype=self._out_dtype)
        else:
            shape = (b, self.config.image_channels, self.pixel_frames(f), h * s, w * s)
            out = self._tiled(self.model.decode_stream, latent, (h, w), 1, s, shape, spec, progress)
        # A sum carries any NaN or infinity through (accumulated in float32, which a video's values
        # cannot overflow) without a full-size boolean copy of a possibly long video.
        if not bool(torch.isfinite(out.sum(dtype=torch.float32))):
            raise ValueError("the VAE decoded to NaN or infinite values, not a video; its weights "
                             "are damaged or overflow in this dtype — reload the VAE file, or "
                             "decode in float32")
        if crop is not None:
            ch, cw = crop
            if not (0 < ch <= h * s and 0 < cw <= w * s):
                raise ValueError(f"crop {crop} must fit in the decoded size {h * s}x{w * s}")
            out = out[..., :ch, :cw]
        return out.clamp_(-1.0, 1.0)

    def decode(self, latent: torch.Tensor, **kwargs) -> torch.Tensor:
        """normalised latent [B, z, F, h, w] -> video [B, 3, 4(F-1)+1, h*s, w*s] in [-1, 1].
        Keywords as for `decode_raw`."""
        latent = self._check_latent(latent)
        return self.decode_raw(self.latent_format.denormalize(latent), **kwargs)


    def _tiled(self, stream, x: torch.Tensor, grid: tuple[int, int], in_scale: int,
               out_scale: int, shape: tuple[int, ...], spec: TileSpec,
               progress: Progress | None) -> torch.Tensor:
        """Run `stream` (encode_stream or decode_stream) tile by tile; progress spans all tiles."""
        current = [0, 1]  # (tile index, tile count), set by `tiled` before each tile

        def on_tile(i: int, n: int) -> None:
            current[0], current[1] = i, n

        def tile_progress(done: int, total: int) -> None:
            progress(current[0] * total + done, current[1] * total)

        def run(part: torch.Tensor) -> torch.Tensor:
            return stream(part, tile_progress if progress is not None else None,
                          out_dtype=self._out_dtype)

        return tiled(run, x, grid, in_scale, out_scale, shape, spec, self._out_dtype, on_tile)
