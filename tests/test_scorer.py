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
        for seed in range(40):
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
