"""Procedural training data for the pack's default model: one shape, one colour, one direction.

    clip = make_clip(seed)                 # deterministic from the seed
    clip.frames   uint8 [T, H, W, 3]        # T = 17, H = W = 64 by default
    clip.caption  "a red circle moving right on a black background"

Each clip shows a single filled shape (circle, square, triangle) of one palette colour moving in a
straight line at constant speed in one of four directions over a plain background. Position, size
and speed are drawn from ranges that keep the whole shape inside the frame for every frame. Edges
are anti-aliased (4x4 supersampling), which keeps the data smooth enough for a small VAE.

A fixed set of (colour, shape, direction) triples, `HELD_OUT`, is never used for training (on any
background); evaluation prompts come from it. Every colour, shape and direction on its own still
appears in training, so held-out prompts test composition, not new words.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# Object colours (RGB): saturated, far apart from each other and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 50),
    "blue": (45, 90, 255),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "cyan": (40, 220, 225),
    "magenta": (225, 45, 215),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (120, 120, 120),
    "navy": (15, 20, 85),
}
SHAPES = ("circle", "square", "triangle")
# Unit displacement per direction in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
}


def _held_out_triples() -> tuple[tuple[str, str, str], ...]:
    """Two (colour, shape, direction) triples per colour, chosen by a fixed rule so that every
    shape and every direction is held out with several colours (14 of the 84 triples):
    colour i holds out (shape i mod 3, direction i mod 4) and (shape (i+1) mod 3, direction
    (i+2) mod 4)."""
    colours, directions = list(COLOURS), list(DIRECTIONS)
    out = []
    for i, colour in enumerate(colours):
        out.append((colour, SHAPES[i % 3], directions[i % 4]))
        out.append((colour, SHAPES[(i + 1) % 3], directions[(i + 2) % 4]))
    return tuple(out)


HELD_OUT: tuple[tuple[str, str, str], ...] = _held_out_triples()
SPLITS = ("train", "heldout")

SUPERSAMPLE = 4  # sub-pixel samples per axis for anti-aliased edges


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip (rendering is a pure function of it)."""

    colour: str            # a key of COLOURS
    shape: str             # one of SHAPES
    direction: str         # a key of DIRECTIONS
    background: str        # a key of BACKGROUNDS
    size: float            # half-extent of the shape in pixels (circle radius, square half-side)
    start: tuple[float, float]  # centre (x, y) in pixels at frame 0
    speed: float           # pixels per frame along the direction
    frames: int = 17       # pixel frames (4n + 1 for the VAE)
    height: int = 64
    width: int = 64

    def __post_init__(self) -> None:
        for name, table in (("colour", COLOURS), ("direction", DIRECTIONS),
                            ("background", BACKGROUNDS)):
            if getattr(self, name) not in table:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; use one of {sorted(table)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; use one of {SHAPES}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"frames must be 4n + 1 (1, 5, 9, 17, ...), got {self.frames}")

    @property
    def caption(self) -> str:
        return caption_for(self.colour, self.shape, self.direction, self.background)

    def centre(self, frame: int) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return (self.start[0] + dx * self.speed * frame, self.start[1] + dy * self.speed * frame)


@dataclass(frozen=True)
class Clip:
    spec: ClipSpec
    frames: np.ndarray     # uint8 [T, H, W, 3]

    @property
    def caption(self) -> str:
        return self.spec.caption


def caption_for(colour: str, shape: str, direction: str, background: str) -> str:
    """The one caption template of the data set."""
    return f"a {colour} {shape} moving {direction} on a {background} background"


def parse_caption(caption: str) -> tuple[str, str, str, str]:
    """(colour, shape, direction, background) of a caption in the data set's template."""
    words = caption.strip().lower().split()
    if (len(words) != 9 or words[0] != "a" or words[3] != "moving" or words[5] != "on"
            or words[6] != "a" or words[8] != "background"):
        raise ValueError(f"caption {caption!r} does not follow the template "
                         f"'a <colour> <shape> moving <direction> on a <background> background'")
    colour, shape, direction, background = words[1], words[2], words[4], words[7]
    ClipSpec(colour, shape, direction, background, 8.0, (32.0, 32.0), 0.0)  # validates the words
    return colour, shape, direction, background


def is_held_out(colour: str, shape: str, direction: str) -> bool:
    return (colour, shape, direction) in HELD_OUT


def combinations(split: str) -> list[tuple[str, str, str, str]]:
    """All (colour, shape, direction, background) of a split, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    want_held = split == "heldout"
    return [(c, s, d, b) for c, s, d, b in itertools.product(COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS)
            if is_held_out(c, s, d) == want_held]


def random_spec(rng: np.random.Generator, colour: str, shape: str, direction: str,
                background: str, frames: int = 17, height: int = 64, width: int = 64) -> ClipSpec:
    """Random size, speed and start for given attributes, keeping the shape fully visible."""
    short = min(height, width)
    size = float(rng.uniform(0.12, 0.2) * short)            # 7.7 .. 12.8 px at 64
    travel = float(rng.uniform(0.3, 0.45) * short)           # 19 .. 29 px over the clip
    speed = travel / max(frames - 1, 1)
    margin = size + 1.0
    dx, dy = DIRECTIONS[direction]
    span_x = travel if dx else 0.0
    span_y = travel if dy else 0.0
    x0 = float(rng.uniform(margin, width - margin - span_x))
    y0 = float(rng.uniform(margin, height - margin - span_y))
    if dx < 0:
        x0 += span_x                                         # start on the right, move left
    if dy < 0:
        y0 += span_y
    return ClipSpec(colour, shape, direction, background, size, (x0, y0), speed, frames, height, width)


def spec_for_seed(seed: int, split: str = "train", frames: int = 17, height: int = 64,
                  width: int = 64) -> ClipSpec:
    """The clip spec of `seed` in `split`: attributes drawn uniformly from the split's
    combinations, then geometry drawn by `random_spec`. Pure function of its arguments."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    combos = combinations(split)  # validates the split
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    colour, shape, direction, background = combos[int(rng.integers(len(combos)))]
    return random_spec(rng, colour, shape, direction, background, frames, height, width)


def _coverage(spec: ClipSpec, frame: int) -> np.ndarray:
    """Anti-aliased coverage [H, W] in [0, 1] of the shape at `frame`."""
    k = SUPERSAMPLE
    ys = (np.arange(spec.height * k) + 0.5) / k                 # sub-pixel centres, pixel units
    xs = (np.arange(spec.width * k) + 0.5) / k
    cx, cy = spec.centre(frame)
    x, y = xs[None, :] - cx, ys[:, None] - cy                    # [H*k, 1], [1, W*k] offsets
    r = spec.size
    if spec.shape == "circle":
        inside = x * x + y * y <= r * r
    elif spec.shape == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    else:
        # Upward-pointing isosceles triangle with apex at (0, -r), base at y = +r, half-width r.
        inside = (y <= r) & (y >= -r) & (np.abs(x) <= (y + r) / 2)
    inside = inside.astype(np.float32)
    return inside.reshape(spec.height, k, spec.width, k).mean(axis=(1, 3))


def render(spec: ClipSpec) -> np.ndarray:
    """The frames of a clip spec: uint8 [T, H, W, 3]."""
    bg = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    fg = np.asarray(COLOURS[spec.colour], dtype=np.float32)
    out = np.empty((spec.frames, spec.height, spec.width, 3), dtype=np.uint8)
    for t in range(spec.frames):
        a = _coverage(spec, t)[..., None]                        # [H, W, 1]
        out[t] = np.clip(np.rint(bg + a * (fg - bg)), 0, 255).astype(np.uint8)
    return out


def make_clip(seed: int, split: str = "train", frames: int = 17, height: int = 64,
              width: int = 64) -> Clip:
    """The clip of `seed` in `split` (deterministic)."""
    spec = spec_for_seed(seed, split, frames, height, width)
    return Clip(spec, render(spec))


def to_tensor(frames: np.ndarray):
    """uint8 [T, H, W, 3] -> float32 tensor [3, T, H, W] in [-1, 1] (the VAE's input range)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.permute(3, 0, 1, 2).contiguous()
