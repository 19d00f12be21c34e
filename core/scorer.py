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
    5. Per frame (`frames_of`, in `ClipScore.frames`): the object's coverage alpha (each pixel's
       distance from the background colour relative to the object colour's), its largest connected
       region at alpha >= 0.5, and that region's bounding box. Shape: the intersection over union
       of the region with the ideal circle (inscribed ellipse), square (the box) and upward
       triangle (apex at the top middle, base at the bottom) of that box; the best of the three.
       The fill ratio of the box (square ~1, circle ~pi/4, triangle ~1/2) is reported too. Also
       the object's soft area (sum of alpha), its mean colour (pixels at alpha >= 0.75) snapped to
       the palette, and the background's spread (std of the pixels away from the object).
    6. Clip: the shape most frames read, area change (max - min) / median of the soft areas,
       background std over all frames, and per-frame shapes, IoUs and colours.

Palettes come from `core.synthetic.shapes` (the data set's own colours), so the scorer reads a
clip exactly as the captions describe it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .synthetic.shapes import BACKGROUNDS, COLOURS, SHAPES

OBJECT_DISTANCE = 60.0     # RGB distance (0..441) from the background that counts as object
CORE_FRACTION = 0.7        # object pixels at least this fraction of the far end of the distances
MIN_OBJECT_PIXELS = 6      # a frame with fewer object pixels has no visible object
MIN_TRACK_FRAMES = 3       # frames with a visible object needed to read a direction
MIN_TRAVEL_PX = 2.0        # total centroid travel (pixels) below which the object is static
SHAPE_ALPHA = 0.5          # coverage at which a pixel belongs to the object's shape
COLOUR_ALPHA = 0.75        # coverage from which a pixel counts towards the object's mean colour
BACKGROUND_MARGIN = 2      # pixels around the object left out of the background region
SUPERSAMPLE = 4            # sub-pixel samples per axis of the ideal shapes


@dataclass(frozen=True)
class FrameScore:
    """What one frame shows (`found` False: no object region in it)."""
    found: bool
    shape: str | None = None           # the ideal shape with the largest IoU
    iou: dict[str, float] = field(default_factory=dict)  # IoU with each ideal shape of the box
    fill: float = 0.0                  # region / box pixels: square ~1, circle ~0.79, triangle ~0.5
    area: float = 0.0                  # soft area: sum of coverage around the region, pixels
    colour: str | None = None          # nearest palette colour of the region's mean colour
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right (exclusive ends)


@dataclass(frozen=True)
class ClipScore:
    background: str              # nearest background palette name
    colour: str | None           # nearest object palette name (None: no object found)
    direction: str | None        # 'left' | 'right' | 'up' | 'down' (None: no motion found)
    found: bool                  # an object was visible in enough frames to track
    travel: float                # centroid displacement along the dominant axis, pixels
    track: np.ndarray            # [T, 2] centroids (x, y), NaN where no object
    shape: str | None = None     # the shape most frames read (None: no object)
    frames: tuple[FrameScore, ...] = ()   # per-frame reads (empty when no object was found)
    area_change: float = float("nan")      # (max - min) / median of the per-frame soft areas
    background_std: float = float("nan")   # std (0..255, worst channel) of the background region

    def shape_iou(self, shape: str) -> float:
        """Mean over frames of the IoU with the ideal `shape` (0 for frames without an object)."""
        if not self.frames:
            return 0.0
        return float(np.mean([f.iou.get(shape, 0.0) for f in self.frames]))

    def shape_frames(self, shape: str) -> float:
        """Fraction of frames that read `shape`."""
        if not self.frames:
            return 0.0
        return float(np.mean([f.shape == shape for f in self.frames]))

    def colour_steady(self, colour: str) -> bool:
        """Whether every frame shows an object whose mean colour is nearest to `colour`."""
        return bool(self.frames) and all(f.found and f.colour == colour for f in self.frames)

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
    object_rgb = np.median(x[core if core.any() else mask], axis=0)
    colour = _nearest(object_rgb, COLOURS)
    frames_read, area_change, background_std = _frame_reads(x, bg_rgb, object_rgb)
    votes = Counter(f.shape for f in frames_read if f.found)
    shape = votes.most_common(1)[0][0] if votes else None
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
    return ClipScore(background, colour, direction, True, float(travel), track, shape,
                     frames_read, area_change, background_std)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean [H, W] mask (all False if the mask is empty):
    every pixel takes the largest label in its 3x3 neighbourhood until nothing changes."""
    if not mask.any():
        return np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    out = np.zeros_like(mask)
    out[r0:r1, c0:c1] = _largest_in(mask[r0:r1, c0:c1])
    return out


def _largest_in(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    label = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        p = np.pad(label, 1)
        spread = np.max([p[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
        spread = np.where(mask, spread, 0)
        if np.array_equal(spread, label):
            break
        label = spread
    counts = np.bincount(label[mask])
    return label == int(np.argmax(counts))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of a boolean [H, W] mask by `radius` pixels."""
    out = mask.copy()
    h, w = mask.shape
    p = np.pad(mask, radius)
    for i in range(2 * radius + 1):
        for j in range(2 * radius + 1):
            out |= p[i:i + h, j:j + w]
    return out


def ideal_shape(shape: str, height: int, width: int,
                box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Coverage [height, width] in [0, 1] of the ideal `shape` filling `box` = (top, bottom, left,
    right) in pixel units (default: the whole grid), as the data set draws it: circle = inscribed
    ellipse, square = the whole box, triangle = apex at the top middle and base along the bottom."""
    top, bottom, left, right = box if box is not None else (0.0, height, 0.0, width)
    k = SUPERSAMPLE
    y = ((np.arange(height * k) + 0.5) / k)[:, None]                   # sub-pixel centres
    x = ((np.arange(width * k) + 0.5) / k)[None, :]
    v = (y - top) / max(bottom - top, 1e-6)                             # 0 top .. 1 bottom
    u = (x - left) / max(right - left, 1e-6)                            # 0 left .. 1 right
    in_box = (v >= 0) & (v <= 1) & (u >= 0) & (u <= 1)
    if shape == "circle":
        inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "square":
        inside = in_box
    elif shape == "triangle":
        inside = in_box & (np.abs(u - 0.5) <= v / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    return inside.astype(np.float32).reshape(height, k, width, k).mean(axis=(1, 3))


def _read_frame(x: np.ndarray, alpha: np.ndarray) -> tuple[FrameScore, np.ndarray]:
    """One frame [H, W, 3] (0..255) and its object coverage [H, W] -> (read, object region).

    Each side of the region's whole-pixel box moves out by the coverage of the line just outside
    it and in by the coverage its own edge line lacks (anti-aliased edges: a sub-pixel box); the
    IoU compares the soft coverage around the region with the ideal shape's coverage of that box."""
    h, w = alpha.shape
    region = _largest_region(alpha >= SHAPE_ALPHA)
    if region.sum() < MIN_OBJECT_PIXELS:
        return FrameScore(False), region
    rows, cols = np.nonzero(region)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    fill = float(region[top:bottom, left:right].mean())
    soft = np.clip(alpha, 0.0, 1.0)

    def outside(line: np.ndarray) -> float:       # coverage just outside one side of the box
        return float(line.max()) if line.size else 0.0

    def inside(line: np.ndarray) -> float:        # missing coverage of the box's own edge line
        return 1.0 - float(line.max())

    box = (top - outside(soft[top - 1, left:right] if top > 0 else soft[:0])
           + inside(soft[top, left:right]),
           bottom + outside(soft[bottom, left:right] if bottom < h else soft[:0])
           - inside(soft[bottom - 1, left:right]),
           left - outside(soft[top:bottom, left - 1] if left > 0 else soft[:0])
           + inside(soft[top:bottom, left]),
           right + outside(soft[top:bottom, right] if right < w else soft[:0])
           - inside(soft[top:bottom, right - 1]))
    near = _dilate(region, 1)
    a = np.where(near, soft, 0.0)
    # Only a window around the box can differ from zero in either map.
    r0, r1, c0, c1 = max(top - 2, 0), min(bottom + 2, h), max(left - 2, 0), min(right + 2, w)
    window = a[r0:r1, c0:c1]
    shifted = (box[0] - r0, box[1] - r0, box[2] - c0, box[3] - c0)
    iou = {}
    for name in SHAPES:
        ideal = ideal_shape(name, r1 - r0, c1 - c0, shifted)
        iou[name] = float(np.minimum(window, ideal).sum()
                          / max(np.maximum(window, ideal).sum(), 1e-6))
    solid = region & (alpha >= COLOUR_ALPHA)
    colour = _nearest(x[solid if solid.any() else region].mean(axis=0), COLOURS)
    return FrameScore(True, max(iou, key=iou.get), iou, fill, float(a.sum()), colour,
                      (int(top), int(bottom), int(left), int(right))), region


def _frame_reads(x: np.ndarray, bg_rgb: np.ndarray, object_rgb: np.ndarray
                 ) -> tuple[tuple[FrameScore, ...], float, float]:
    """Per-frame reads, the area change and the background spread of frames [T, H, W, 3]."""
    # Coverage: distance from the background relative to the object's (an anti-aliased edge
    # pixel bg + a (c - bg) reads a); a distance, not a projection, so that a frame whose object
    # changed hue still shows its object (and then reads the other colour).
    span = float(np.sqrt(((object_rgb - bg_rgb) ** 2).sum()))
    alpha = np.sqrt(((x - bg_rgb) ** 2).sum(axis=-1)) / max(span, 1e-6)  # [T, H, W]
    reads, background = [], []
    for t in range(x.shape[0]):
        read, region = _read_frame(x[t], alpha[t])
        reads.append(read)
        background.append(x[t][~_dilate(region, BACKGROUND_MARGIN)])
    areas = np.asarray([r.area for r in reads if r.found])
    change = (float((areas.max() - areas.min()) / max(np.median(areas), 1e-6))
              if len(areas) == len(reads) else float("inf"))
    spread = float(np.concatenate(background).std(axis=0).max())
    return tuple(reads), change, spread


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 (or [0, 1] float) images or videos of the same shape."""
    x, y = _as_rgb255(a), _as_rgb255(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
