"""Spatial tiling for the VAE: run encode/decode on overlapping tiles and blend them.

Tiles are laid out on the latent grid (so they always fall on stride boundaries); the tile
function maps a tile of the input to a tile of the output scaled by `scale` (decode: x s, encode:
x 1/s). In each overlap the two tiles are cross-faded with linear ramps that sum to one, and the
result is normalised by the summed weights (so layouts where three tiles meet stay a convex
blend), so a tile function that commutes with cropping is
reproduced exactly. The Wan VAE does not commute with cropping (zero padding at tile borders,
attention over the whole frame in the middle blocks), so tiled results are an approximation
whose error shrinks as the overlap grows; tiling is opt-in for frames that do not fit in memory.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Working memory of one decode chunk (one latent frame -> 4 pixel frames), in bytes per output
# pixel per channel of decoder base width, for 4-byte floats. Measured with
# tests/benchmarks/bench_vae.py (Wan2.1 width, float32, CPU): 86 MiB at 64x64, 305 MiB at
# 128x128, i.e. ~200 bytes per pixel-channel; about half of it is the feature cache (two frames
# per causal conv), the rest the chunk's live activations. Set 2x above, for allocator
# fragmentation and backends that keep more temporaries.
DECODE_BYTES_PER_PIXEL_CHANNEL = 400
# Encoding one 4-frame chunk needs a little less than decoding one latent frame (71 vs 86 MiB
# at 64x64 in the benchmark's encode rows); the same headroom applies.
ENCODE_BYTES_PER_PIXEL_CHANNEL = 400
# Without a way to ask the OS, assume this much free memory (bytes) on the CPU.
FALLBACK_FREE_BYTES = 8 * 2 ** 30
# Use at most this share of the free memory for one tile's working set.
MEMORY_SHARE = 0.5
@dataclass(frozen=True)
class TileSpec:
    tile: int = 32         # tile side in latent pixels (x spatial stride in pixels)
    overlap: int = 8       # overlap of neighbouring tiles in latent pixels

    def __post_init__(self):
        if self.tile < 1 or self.overlap < 0:
            raise ValueError(f"tile size must be >= 1 and overlap >= 0, got {self}")
        if self.overlap >= self.tile:
            raise ValueError(f"overlap {self.overlap} must be smaller than the tile {self.tile} "
                             f"(both in latent pixels)")


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on `device`: CUDA's own count, else MemAvailable from /proc/meminfo (Linux),
    else FALLBACK_FREE_BYTES."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_FREE_BYTES


def auto_tile(latent_hw: tuple[int, int], stride: int, width: int, bytes_per_pixel_channel: int,
              element_size: int, free_bytes: int) -> TileSpec | None:
    """The largest square tile whose working set fits MEMORY_SHARE of `free_bytes`, or None
    when the whole frame fits (no tiling needed).

    Working set of an h x w latent tile: a part linear in pixels (the constants above) plus the
    middle attention's (h*w)^2 score matrix, counted in full in case the backend materialises it.
    """
    budget = MEMORY_SHARE * free_bytes

    def working_set(h: int, w: int) -> float:
        linear = bytes_per_pixel_channel * width * h * w * stride * stride * element_size / 4
        return linear + (h * w) ** 2 * element_size

    h, w = latent_hw
    if working_set(h, w) <= budget:
        return None
    side = min(h, w)
    while side > 8 and working_set(side, side) > budget:
        side -= 1
    return TileSpec(tile=side, overlap=max(1, side // 8))


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile start positions covering [0, size) with at least `overlap` shared between neighbours."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    last = size - tile
    return [round(i * last / (n - 1)) for i in range(n)]


def _ramp(length: int, before: int, after: int, scale: int, dtype, device) -> torch.Tensor:
    """1D weights over a tile of `length` output pixels: linear ramps over the overlaps."""
    w = torch.ones(length, dtype=dtype, device=device)
    for n, side in ((before * scale, "before"), (after * scale, "after")):
        if n:
            r = (torch.arange(n, dtype=dtype, device=device) + 0.5) / n
            if side == "before":
                w[:n] = r
            else:
                w[length - n:] = r.flip(0)
    return w


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid_hw: tuple[int, int],
          in_scale: int, out_scale: int, out_shape: tuple[int, ...], spec: TileSpec,
          out_dtype: torch.dtype,
          on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Apply `fn` tile by tile and blend.

    x          [B, C, T, grid_h*in_scale, grid_w*in_scale]
    fn         tile [B, C, T, th*in_scale, tw*in_scale] -> [B, C', T', th*out_scale, tw*out_scale]
    out_shape  [B, C', T', grid_h*out_scale, grid_w*out_scale]
    `on_tile(i, n)` is called before tile i of n.
    """
    gh, gw = grid_hw
    ys, xs = _starts(gh, spec.tile, spec.overlap), _starts(gw, spec.tile, spec.overlap)
    out = torch.zeros(out_shape, dtype=out_dtype, device=x.device)
    weight = torch.zeros(out_shape[-2:], dtype=out_dtype, device=x.device)
    tiles = [(y, xx) for y in ys for xx in xs]
    for i, (y0, x0) in enumerate(tiles):
        if on_tile is not None:
            on_tile(i, len(tiles))
        th, tw = min(spec.tile, gh), min(spec.tile, gw)
        part = fn(x[..., y0 * in_scale:(y0 + th) * in_scale, x0 * in_scale:(x0 + tw) * in_scale])
        yi, xi = ys.index(y0), xs.index(x0)
        wy = _ramp(th * out_scale, ys[yi - 1] + th - y0 if yi else 0,
                   y0 + th - ys[yi + 1] if yi + 1 < len(ys) else 0, out_scale, out_dtype, x.device)
        wx = _ramp(tw * out_scale, xs[xi - 1] + tw - x0 if xi else 0,
                   x0 + tw - xs[xi + 1] if xi + 1 < len(xs) else 0, out_scale, out_dtype, x.device)
        w2 = wy[:, None] * wx[None, :]                                    # (th*s, tw*s)
        region = (..., slice(y0 * out_scale, (y0 + th) * out_scale),
                  slice(x0 * out_scale, (x0 + tw) * out_scale))
        out[region] += part.to(out_dtype) * w2
        weight[region] += w2
        del part
    assert bool((weight > 0).all()), "tiles cover the whole frame"
    return out.div_(weight)

