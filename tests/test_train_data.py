"""Video folders to cached latents: good clips (GIF, MP4, image sequence; sidecar or jsonl
captions) are encoded once and reused; bad ones (corrupt file, missing caption, too few frames,
a broken jsonl line) are reported with file and reason and skipped."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from core.train import DataConfig, cache_latents, find_clips
from core.vae import PRESETS, build_vae
from core.vae.model import random_state_dict
from core.video_io import write_video

torch.set_num_threads(1)


def frames(n, h=20, w=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def gif(path, n, seed=0):
    images = [Image.fromarray(f) for f in frames(n, seed=seed)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=60, loop=0)


@pytest.fixture(scope="module")
def vae():
    cfg = PRESETS["test-2.1"]
    return build_vae(cfg, random_state_dict(cfg, seed=0))


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "clips"
    (root / "seq").mkdir(parents=True)
    gif(root / "good.gif", 6)
    (root / "good.txt").write_text("a red circle moving right\n")
    for i, frame in enumerate(frames(5, seed=1)):
        Image.fromarray(frame).save(root / "seq" / f"f{i + 1}.png")  # f1..f5, natural order
    (root / "seq.txt").write_text("a sequence of images")
    gif(root / "short.gif", 3)
    (root / "short.txt").write_text("too short")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (root / "corrupt.txt").write_text("broken file")
    gif(root / "nocap.gif", 5)
    (root / "sub").mkdir()
    gif(root / "sub" / "fromjson.gif", 5, seed=2)
    write_video(frames(5, 16, 16, seed=3), root / "sub" / "clip.mp4", fps=8)
    (root / "captions.jsonl").write_text(
        '{"file": "sub/fromjson.gif", "caption": "captioned in jsonl"}\n'
        'this line is not json\n'
        '{"file": "sub/clip.mp4", "text": "an mp4 clip"}\n')
    return root


def test_good_clips_cached_bad_ones_reported(folder, vae, tmp_path, caplog, monkeypatch):
    config = DataConfig(width=16, height=16, frames=5)
    with caplog.at_level(logging.WARNING, logger="core.train.data"):
        data = cache_latents(folder, vae, tmp_path / "cache", config)
    names = sorted(e[2].name for e in data.entries)
    assert names == ["clip.mp4", "fromjson.gif", "good.gif", "seq"]
    reasons = {s.path.split("/")[-1]: s.reason for s in data.skipped}
    assert set(reasons) == {"short.gif", "corrupt.mp4", "nocap.gif", "captions.jsonl:2"}
    assert "has 3 frames, needs at least 5" in reasons["short.gif"]
    assert "cannot decode" in reasons["corrupt.mp4"]
    assert "no caption" in reasons["nocap.gif"]
    assert "line 2" in reasons["captions.jsonl:2"]
    for name in ("short.gif", "corrupt.mp4", "nocap.gif"):  # logged with the file and the reason
        assert any(name in r.getMessage() for r in caplog.records), name
    assert "4 clips ready, 4 skipped" in data.report()

    item = data[[e[2].name for e in data.entries].index("good.gif")]
    assert item["caption"] == "a red circle moving right"
    assert item["latent"].shape == (16, 2, 2, 2)  # 5 frames -> 2 latent frames, 16 px -> 2
    captions = {e[2].name: e[1] for e in data.entries}
    assert captions["fromjson.gif"] == "captioned in jsonl" and captions["clip.mp4"] == "an mp4 clip"

    # Encoded once: a second pass reads the cache and never calls the VAE.
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 4
    monkeypatch.setattr(vae, "encode", lambda *a, **k: pytest.fail("re-encoded a cached clip"))
    again = cache_latents(folder, vae, tmp_path / "cache", config)
    assert [e[0] for e in again.entries] == [e[0] for e in data.entries]
    # A caption edit needs no re-encoding; a new size does (new cache keys).
    (folder / "good.txt").write_text("a blue circle")
    assert any(e[1] == "a blue circle" for e in cache_latents(folder, vae, tmp_path / "cache",
                                                             config).entries)
    monkeypatch.undo()
    single = cache_latents(folder, vae, tmp_path / "cache", DataConfig(width=8, height=8, frames=1))
    assert len(single) == 5  # short.gif has enough frames for single images
    assert len(list((tmp_path / "cache").iterdir())) == 4 + 5


def test_sequence_frames_in_natural_order(folder):
    clips, _ = find_clips(folder)
    seq = next(c for c in clips if c.path.name == "seq")
    from core.train.data import read_clip_frames
    got = read_clip_frames(seq.path)
    assert np.array_equal(got, frames(5, seed=1))


def test_user_errors(folder, vae, tmp_path):
    with pytest.raises(ValueError, match="4n\\+1"):
        DataConfig(frames=6)
    with pytest.raises(ValueError, match="multiple of the VAE's stride"):
        cache_latents(folder, vae, tmp_path / "c", DataConfig(width=12, height=16, frames=5))
    with pytest.raises(FileNotFoundError):
        cache_latents(tmp_path / "nowhere", vae, tmp_path / "c", DataConfig(16, 16, 5))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.gif").write_bytes(b"GIF89a broken")
    (empty / "x.txt").write_text("caption")
    with pytest.raises(ValueError, match="no usable clips.*x.gif"):
        cache_latents(empty, vae, tmp_path / "c", DataConfig(16, 16, 5))
