"""Spatial tiling: the blending is exact for anything that commutes with cropping, a single tile
is exactly the untiled result, and the tiled VAE stays close to the untiled one.

Why the VAE is not exact under tiling: every tile's convolutions see zero padding at the tile
border instead of the neighbouring pixels, and the middle attention block mixes the whole frame.
The error therefore concentrates near tile borders and is cross-faded away over the overlap.
With random weights (no smoothness learned) it is larger than with trained weights; the bounds
below are set from measurements (about 0.3 relative RMS for 8-latent tiles at 4 overlap on the
random test decoder, 0.05 for the encoder) with headroom, and check that blending leaves no
visible seam: the jump between neighbouring pixel rows at a seam is no larger than elsewhere."""
import pytest
import torch
import torch.nn.functional as F

from core.vae import PRESETS, TileSpec, load_vae
from core.vae.model import random_state_dict
from core.vae.tiling import _starts, auto_tile, tiled


def test_blending_is_a_partition_of_unity():
    # A per-pixel function (nearest x8 up-sampling then a pointwise map) commutes with cropping,
    # so tiling it must reproduce it exactly, whatever the tile layout.
    x = torch.randn(1, 2, 3, 13, 11, dtype=torch.float64)

    def fn(t):
        return torch.tanh(F.interpolate(t, scale_factor=(1, 8, 8), mode="nearest"))

    want = fn(x)
    for spec in (TileSpec(4, 1), TileSpec(5, 2), TileSpec(6, 2), TileSpec(13, 0)):
        got = tiled(fn, x, (13, 11), 1, 8, tuple(want.shape), spec, torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_tile_starts_cover_with_overlap():
    for size in range(1, 40):
        for tile, overlap in ((8, 2), (6, 1), (16, 4)):
            starts = _starts(size, tile, overlap)
            ends = [s + min(tile, size) for s in starts]
            assert starts[0] == 0 and ends[-1] == size
            assert all(b - a >= 1 for a, b in zip(starts, starts[1:]))
            assert all(e - s >= min(overlap, size) for e, s in zip(ends, starts[1:]))


@pytest.fixture(scope="module")
def vae():
    return load_vae(random_state_dict(PRESETS["test-2.1"], seed=7))


def test_single_tile_is_exact(vae):
    z = torch.randn(1, 16, 2, 6, 5)
    torch.testing.assert_close(vae.decode(z, tiling=TileSpec(8, 2)), vae.decode(z), rtol=0, atol=0)


def _rel_rms(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.std()).item()


@pytest.mark.slow
def test_tiled_decode_and_encode_are_close(vae):
    g = torch.Generator().manual_seed(0)
    # A smooth video (like real footage): low-frequency noise, up-sampled.
    video = F.interpolate(torch.randn(1, 3, 5, 8, 8, generator=g), size=(5, 128, 128),
                          mode="trilinear").clamp(-1, 1)
    z = vae.encode(video)
    full = vae.decode(z)
    spec = TileSpec(12, 4)                     # 2 x 2 tiles of 96 px overlapping by 64 px
    assert _starts(16, 12, 4) == [0, 4]
    assert _rel_rms(vae.encode(video, tiling=spec), z) < 0.05      # measured 0.019
    tiles = vae.decode(z, tiling=spec)
    err = _rel_rms(tiles, full)
    assert err < 0.4                                                # measured 0.23
    # Smaller tiles (less context per tile) must be worse, not better.
    assert _rel_rms(vae.decode(z, tiling=TileSpec(8, 2)), full) > err
    # Seams: the row-to-row jump where a tile's cross-fade starts or ends is no larger than
    # the typical jump inside the image (an unblended seam would stand out as a step).
    jumps = (tiles[..., 1:, :] - tiles[..., :-1, :]).abs().mean(dim=(0, 1, 2, 4))  # (H-1,)
    seam_jumps = jumps[[4 * 8 - 1, 12 * 8 - 1]]
    assert seam_jumps.max() <= 2.0 * jumps.median(), (seam_jumps, jumps.median())


def test_auto_tile_uses_the_free_memory():
    # Whole frame fits -> no tiling; 1000x less memory -> square tiles with overlap.
    assert auto_tile((90, 160), 8, 96, 800, 4, free_bytes=2 ** 40) is None
    spec = auto_tile((90, 160), 8, 96, 800, 4, free_bytes=2 ** 30)
    assert spec is not None and 8 <= spec.tile < 90 and 0 < spec.overlap < spec.tile // 2


def test_auto_tiling_runs(vae):
    z = torch.randn(1, 16, 1, 4, 4)
    torch.testing.assert_close(vae.decode(z, tiling="auto"), vae.decode(z))  # fits: untiled
