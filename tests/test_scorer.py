"""The scorer reads procedural clips correctly, also when they are noisy or blurred."""
from __future__ import annotations

import numpy as np
import pytest

from core.scorer import ClipScore, psnr, score_clip
from core.synthetic.shapes import BACKGROUNDS, make_clip


def _blur(frames: np.ndarray, radius: int = 2) -> np.ndarray:
    """Box blur of [T, H, W, 3] with replicated edges."""
    p = np.pad(frames.astype(np.float32), ((0, 0), (radius, radius), (radius, radius), (0, 0)),
               mode="edge")
    h, w = frames.shape[1:3]
    k = 2 * radius + 1
    return sum(p[:, i:i + h, j:j + w] for i in range(k) for j in range(k)) / k ** 2


def _perturb(frames: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "clean":
        return frames
    if kind == "noise":
        return np.clip(frames + rng.normal(0.0, 25.0, frames.shape), 0, 255).astype(np.uint8)
    return np.clip(_blur(frames), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["clean", "noise", "blur"])
def test_scorer_reads_procedural_clips(kind):
    rng = np.random.default_rng(0)
    right, total = 0, 0
    for split in ("train", "heldout"):
        for seed in range(25):
            clip = make_clip(seed, split)
            spec = clip.spec
            read = score_clip(_perturb(clip.frames, kind, rng))
            right += read.found and read.matches(spec.colour, spec.direction, spec.background)
            total += 1
    assert right == total, f"{kind}: {right}/{total} read correctly"


def test_scorer_accepts_float_frames_and_reports_track():
    clip = make_clip(5)
    read = score_clip(clip.frames.astype(np.float32) / 255.0)
    assert read.matches(clip.spec.colour, clip.spec.direction, clip.spec.background)
    assert read.track.shape == (clip.frames.shape[0], 2)
    assert read.travel > 10.0


def test_scorer_plain_background_has_no_object():
    frames = np.zeros((17, 64, 64, 3), dtype=np.uint8)
    frames[:] = BACKGROUNDS["gray"]
    read = score_clip(frames)
    assert isinstance(read, ClipScore)
    assert read.background == "gray" and not read.found
    assert read.colour is None and read.direction is None


def test_scorer_static_object_has_no_direction():
    clip = make_clip(7)
    frames = np.repeat(clip.frames[:1], 17, axis=0)
    read = score_clip(frames)
    assert read.found and read.colour == clip.spec.colour and read.direction is None


def test_scorer_rejects_bad_shapes():
    with pytest.raises(ValueError, match="T, H, W, 3"):
        score_clip(np.zeros((17, 64, 64), dtype=np.uint8))


def test_psnr():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == float("inf")
    b[0, 0, 0] = 255
    assert psnr(a, b) == pytest.approx(10 * np.log10(255.0 ** 2 / (255.0 ** 2 / 192)))


# ----- shape, steadiness, background flatness ---------------------------------------------------

def _ground_truth(n: int = 15) -> list:
    return [make_clip(seed, split) for split in ("train", "heldout") for seed in range(n)]


def test_ideal_shapes_fill_their_box_as_the_formulas_say():
    from core.scorer import ideal_shape

    # Area of the inscribed ellipse / box = pi/4, triangle with base and height of the box = 1/2.
    for shape, expected in (("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)):
        assert ideal_shape(shape, 64, 64).mean() == pytest.approx(expected, abs=0.005), shape
    with pytest.raises(ValueError, match="unknown shape"):
        ideal_shape("hexagon", 8, 8)


def test_scorer_reads_shape_and_steadiness_of_ground_truth():
    clips = _ground_truth()
    assert {c.spec.shape for c in clips} == {"circle", "square", "triangle"}
    ious = []
    for clip in clips:
        spec = clip.spec
        read = score_clip(clip.frames)
        assert read.shape == spec.shape, (spec, read.shape)
        assert read.shape_frames(spec.shape) == 1.0                   # every frame, frame 0 too
        assert read.frames[0].shape == spec.shape and read.frames[0].iou[spec.shape] >= 0.85
        assert read.colour_steady(spec.colour)
        assert read.area_change <= 0.05                                # anti-aliased: ~constant
        assert read.background_std <= 1.0                               # rendered flat
        fill = np.mean([f.fill for f in read.frames])
        assert fill == pytest.approx({"square": 1.0, "circle": np.pi / 4,
                                      "triangle": 0.5}[spec.shape], abs=0.08)
        ious.append(read.shape_iou(spec.shape))
    assert np.mean(ious) >= 0.95 and min(ious) >= 0.85


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_scorer_reads_shape_of_mildly_degraded_clips(kind):
    rng = np.random.default_rng(1)
    for clip in _ground_truth(8):
        frames = clip.frames
        if kind == "noise":
            frames = np.clip(frames + rng.normal(0.0, 8.0, frames.shape), 0, 255).astype(np.uint8)
        else:
            frames = np.clip(_blur(frames, radius=1), 0, 255).astype(np.uint8)
        assert score_clip(frames).shape == clip.spec.shape, (kind, clip.spec)


def test_soft_blob_scores_lower_iou_than_the_crisp_square():
    clip = next(c for c in (make_clip(s) for s in range(50)) if c.spec.shape == "square")
    crisp = score_clip(clip.frames).shape_iou("square")
    blob = score_clip(np.clip(_blur(clip.frames, radius=3), 0, 255).astype(np.uint8))
    assert blob.shape_iou("square") < crisp - 0.1


def test_scorer_catches_colour_drift_area_change_and_blotches():
    from dataclasses import replace

    from core.synthetic.shapes import COLOURS, render

    clip = make_clip(3)
    spec = clip.spec
    other = next(c for c in COLOURS if c != spec.colour)
    drift = np.concatenate([clip.frames[:12], render(replace(spec, colour=other))[12:]])
    read = score_clip(drift)
    assert not read.colour_steady(spec.colour) and read.frames[-1].colour == other

    grow = np.concatenate([clip.frames[:8], render(replace(spec, size=spec.size * 1.3))[8:]])
    assert score_clip(grow).area_change > 0.3                       # area x 1.69

    blotchy = clip.frames.astype(np.float32)
    # A patch of +30 on ~15% of the background: std ~ 30 sqrt(0.15 * 0.85) ~ 11 on 0..255.
    assert spec.centre(0)[0] - spec.size > 24                       # the object stays right of it
    blotchy[:, 40:64, 0:24] += 30.0
    read = score_clip(np.clip(blotchy, 0, 255).astype(np.uint8))
    assert read.background_std > 6.0 and read.shape == spec.shape
