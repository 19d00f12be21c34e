"""An automatic scorer for generated shape clips, independent of any model.

    result = score_clip(frames)            # frames uint8 [T, H, W, 3] (or float in [0, 1])
    result.background, result.colour, result.direction, result.found

    1. Background: the mode of the border pixels (quantised), snapped to the nearest background
       palette colour.
    2. Object: pixels whose 3x3 neighbourhood mean is far from the background colour.
    3. Colour: the per-channel median of the object's core pixels (those farthest from the
       background), snapped to the nearest object colour.
    4. Direction: the object's centroid in each frame; least-squares slopes of x(t) and y(t); the
       axis with the larger |slope| and its sign give left/right/up/down (image y points down).

Palettes come from `core.synthetic.shapes` (the data set's own colours), so the scorer reads a
clip exactly as the captions describe it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .synthetic.shapes import BACKGROUNDS, COLOURS

OBJECT_DISTANCE = 60.0     # RGB distance (0..441) from the background that counts as object
CORE_FRACTION = 0.7        # object pixels at least this fraction of the far end of the distances
MIN_OBJECT_PIXELS = 6      # a frame with fewer object pixels has no visible object
MIN_TRACK_FRAMES = 3       # frames with a visible object needed to read a direction
MIN_TRAVEL_PX = 2.0        # total centroid travel (pixels) below which the object is static


@dataclass(frozen=True)
class ClipScore:
    background: str              # nearest background palette name
    colour: str | None           # nearest object palette name (None: no object found)
    direction: str | None        # 'left' | 'right' | 'up' | 'down' (None: no motion found)
    found: bool                  # an object was visible in enough frames to track
    travel: float                # centroid displacement along the dominant axis, pixels
    track: np.ndarray            # [T, 2] centroids (x, y), NaN where no object

    def matches(self, colour: str | None = None, direction: str | None = None,
                background: str | None = None) -> bool:
        """Whether every given attribute equals what was read."""
        return ((colour is None or self.colour == colour)
                and (direction is None or self.direction == direction)
                and (background is None or self.background == background))


def _as_rgb255(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 or float in [0, 1] -> float32 0..255."""
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] RGB, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    return np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    table = np.asarray([palette[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((table - rgb[None]) ** 2).sum(axis=1)))]


def background_colour(frames: np.ndarray) -> np.ndarray:
    """RGB (0..255) mode of the border pixels of all frames, quantised to 16 levels per channel
    and refined as the mean of the pixels in the winning bin."""
    return _background(_as_rgb255(frames))


def _background(x: np.ndarray) -> np.ndarray:
    """`background_colour` of frames already in float 0..255."""
    border = np.concatenate([x[:, 0].reshape(-1, 3), x[:, -1].reshape(-1, 3),
                             x[:, :, 0].reshape(-1, 3), x[:, :, -1].reshape(-1, 3)])
    bins = np.clip(border // 16, 0, 15).astype(np.int64)
    keys = bins[:, 0] * 256 + bins[:, 1] * 16 + bins[:, 2]
    mode = np.bincount(keys).argmax()
    return border[keys == mode].mean(axis=0)


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 spatial box filter of [T, H, W, 3] frames (edges replicated)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def score_clip(frames: np.ndarray) -> ClipScore:
    """Read background, object colour and direction of motion from frames [T, H, W, 3]."""
    x = _as_rgb255(frames)
    bg_rgb = _background(x)
    background = _nearest(bg_rgb, BACKGROUNDS)
    # Distance of each pixel's 3x3 neighbourhood mean from the background: pixel noise averages
    # out, so isolated noisy background pixels do not count as object.
    dist = np.sqrt(((_box3(x) - bg_rgb) ** 2).sum(axis=-1))             # [T, H, W]
    mask = dist > OBJECT_DISTANCE
    t, h, w = mask.shape
    ys, xs = np.mgrid[0:h, 0:w]
    track = np.full((t, 2), np.nan, dtype=np.float64)
    for i in range(t):
        m = mask[i]
        if m.sum() >= MIN_OBJECT_PIXELS:
            track[i] = (xs[m].mean(), ys[m].mean())
    seen = ~np.isnan(track[:, 0])
    if mask.sum() < MIN_OBJECT_PIXELS or seen.sum() < MIN_TRACK_FRAMES:
        return ClipScore(background, None, None, False, 0.0, track)
    # The object's core: its pixels farthest from the background (blurred or anti-aliased edges
    # mix in the background and would pull the median towards darker or paler colours).
    raw = np.sqrt(((x - bg_rgb) ** 2).sum(axis=-1))                     # [T, H, W]
    core = mask & (raw >= CORE_FRACTION * np.percentile(raw[mask], 95))
    colour = _nearest(np.median(x[core if core.any() else mask], axis=0), COLOURS)
    times = np.arange(t, dtype=np.float64)[seen]
    slope_x = np.polyfit(times, track[seen, 0], 1)[0]
    slope_y = np.polyfit(times, track[seen, 1], 1)[0]
    span = times[-1] - times[0]
    if abs(slope_x) >= abs(slope_y):
        direction, travel = ("right" if slope_x > 0 else "left"), abs(slope_x) * span
    else:
        direction, travel = ("down" if slope_y > 0 else "up"), abs(slope_y) * span
    if travel < MIN_TRAVEL_PX:
        direction = None
    return ClipScore(background, colour, direction, True, float(travel), track)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 (or [0, 1] float) images or videos of the same shape."""
    x, y = _as_rgb255(a), _as_rgb255(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
