"""core.video_io.write_video: one format per extension, checked before the rename, never a broken
file over a good one, GIF delays that keep the clip's length, the umask's permissions."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from core.video_io import (OutputError, check_output_path, gif_delays_ms, output_kind, read_video,
                           write_video)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions / scripts")


def moving_square(t=9, h=32, w=48):
    """Distinct frames (a white square moving right on gray), so no writer merges two."""
    frames = np.full((t, h, w, 3), 100, dtype=np.uint8)
    for i in range(t):
        frames[i, 8:16, 2 + 3 * i:10 + 3 * i] = 255
    return frames


@pytest.mark.parametrize("name, kind", [
    ("a.mp4", "video"), ("a.MOV", "video"), ("a.mkv", "video"), ("a.webm", "video"),
    ("a.gif", "gif"), ("a.png", "apng"), ("a.webp", "webp"), ("frames/", "folder"),
    ("frames/%03d.png", "pattern"), ("f_%d.png", "pattern")])
def test_output_kind_by_extension(name, kind):
    assert output_kind(name) == kind


@pytest.mark.parametrize("name", ["x.txt", "clip", "x.avi", "f_%d%d.png", "f_%03d.jpg", "a%s.png"])
def test_unwritable_names_are_refused_before_any_work(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.mp4|%03d\.png"):   # names what would work
        write_video(moving_square(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif", ".png", ".webp", ".mkv"])
def test_each_format_reads_back_with_every_frame(tmp_path, suffix):
    frames = moving_square()
    path = write_video(frames, tmp_path / f"clip{suffix}", fps=16.0)
    back, fps = read_video(path)
    assert back.shape == frames.shape
    # Lossy codecs: compare the square's position, not pixels (mean abs error far below the
    # 155-level contrast of the square).
    assert np.abs(back.astype(float) - frames).mean() < 12.0
    assert fps == pytest.approx(16.0, abs=0.1)      # GIF/WebP: per-frame delays are rounded
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temporary file left


def test_png_output_is_an_animated_png_not_a_video_stream(tmp_path):
    from PIL import Image

    path = write_video(moving_square(t=5), tmp_path / "clip.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.n_frames == 5
        assert im.info["duration"] == pytest.approx(62.5)   # APNG stores 1/16 s exactly


def test_gif_delays_keep_the_exact_length(tmp_path):
    from PIL import Image, ImageSequence

    t, fps = 17, 16.0
    path = write_video(moving_square(t=t), tmp_path / "clip.gif", fps=fps)
    with Image.open(path) as im:
        delays = [f.info["duration"] for f in ImageSequence.Iterator(im)]
    assert len(delays) == t and all(d % 10 == 0 for d in delays)   # GIF: 10 ms units
    # Every frame starts within half a unit (5 ms) of i / fps, so the total is exact to 5 ms
    # (a fixed 60 ms delay would end 42.5 ms early).
    starts = np.cumsum([0] + delays)
    assert np.abs(starts - np.arange(t + 1) * 1000.0 / fps).max() <= 5.0
    assert gif_delays_ms(4, 16.0, 10) == [60, 70, 60, 60]
    with pytest.raises(ValueError, match="50 fps"):
        write_video(moving_square(), tmp_path / "fast.gif", fps=60.0)


def test_frame_folder_and_pattern(tmp_path):
    from PIL import Image

    frames = moving_square(t=5)
    folder = write_video(frames, f"{tmp_path}/frames/")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:03d}.png" for i in range(5)]
    with Image.open(folder / "frame_003.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), frames[3])      # PNG is lossless
    write_video(frames, tmp_path / "seq" / "%02d.png")
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == [f"{i:02d}.png" for i in range(5)]
    # An existing folder with files in it is refused; nothing in it changes.
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match="already holds files"):
        write_video(frames[:2], folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        check_output_path(tmp_path / "clip.mp4")


def test_no_frames_or_nan_frames_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video(np.zeros((0, 16, 16, 3), np.uint8), tmp_path / "a.mp4")
    bad = np.full((5, 16, 16, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        write_video(bad, tmp_path / "a.mp4")
    assert list(tmp_path.iterdir()) == []


def _fake_ffmpeg(tmp_path: Path, body: str) -> str:
    """An executable standing in for ffmpeg (reads stdin, then runs `body` with `out` = the
    output path, the last argument)."""
    script = tmp_path / "fake_ffmpeg"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.stdin.buffer.read()\n"
                      f"out = sys.argv[-1]\n{body}\n")
    script.chmod(0o755)
    return str(script)


@posix_only
@pytest.mark.parametrize("body, message", [
    ("sys.stderr.write('No space left on device\\n'); sys.exit(1)", "status 1.*No space left"),
    ("open(out, 'wb').close()", "empty file"),
    ("open(out, 'wb').write(b'\\x00\\x00\\x00\\x01garbage' * 30)", "does not decode"),
])
def test_a_failing_writer_keeps_the_old_file(tmp_path, monkeypatch, body, message):
    import imageio_ffmpeg

    old = write_video(moving_square(), tmp_path / "out" / "clip.mp4")
    before = old.read_bytes()
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: _fake_ffmpeg(tmp_path, body))
    with pytest.raises(OutputError, match=message) as info:
        write_video(moving_square(t=5), old)
    assert "left unchanged" in str(info.value)
    assert old.read_bytes() == before
    assert [p.name for p in old.parent.iterdir()] == ["clip.mp4"]


@posix_only
def test_a_short_file_is_caught_by_the_frame_count(tmp_path, monkeypatch):
    import imageio_ffmpeg

    real = imageio_ffmpeg.get_ffmpeg_exe()
    # A writer that exits 0 but keeps only 3 of the 9 frames.
    body = (f"import subprocess\nsubprocess.run([{real!r}, '-v', 'error', '-f', 'lavfi', '-i', "
            f"'testsrc=size=48x32:rate=16', '-frames:v', '3', '-pix_fmt', 'yuv420p', '-y', "
            f"'-f', 'mp4', out], check=True)")
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: _fake_ffmpeg(tmp_path, body))
    with pytest.raises(OutputError, match="3 frames instead of 9"):
        write_video(moving_square(), tmp_path / "clip.mp4")
    assert list(p.name for p in tmp_path.iterdir()) == ["fake_ffmpeg"]


@posix_only
@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames/"])
def test_new_files_get_the_umask_permissions(tmp_path, name):
    previous = os.umask(0o022)
    try:
        path = write_video(moving_square(t=5), f"{tmp_path}/{name}")
    finally:
        os.umask(previous)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
    if path.is_dir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_save_video_node_refuses_zero_frames(pack, monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("FLOWDIT_OUTPUT_DIR", str(tmp_path / "out"))
    node = pack.NODE_CLASS_MAPPINGS["FlowDiTSaveVideo"]()
    with pytest.raises(ValueError, match="0 frames"):
        node.save(torch.zeros(0, 64, 64, 3), 16.0, "FlowDiT/video", "mp4")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    result = node.save(torch.rand(5, 32, 32, 3), 16.0, "FlowDiT/video", "gif")   # still works
    assert result["ui"]["images"][0]["filename"].endswith(".gif")
