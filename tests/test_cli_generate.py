"""`python -m core generate` (and `info`) as a user runs them: subprocesses of the real command.

Argument mistakes must come back as one line, without a traceback, non-zero, and before torch is
imported; a run that cannot write its output must fail and keep the old file; the output's format
follows its extension.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.default_model import settings

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle moving right on a black background"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX umask / rlimit")


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def shipped():
    from core.default_model import bundle
    return bundle.is_shipped()


needs_model = pytest.mark.skipif(not shipped(), reason="the default model's weights are missing")


def bad_cases(tmp: Path):
    full = tmp / "full"
    full.mkdir(exist_ok=True)
    (full / "keep.txt").write_text("keep")
    (tmp / "notes.md").write_text("# not an image\n")
    return {
        "cfg nan": (["--cfg", "nan"], "--cfg"),
        "cfg inf": (["--cfg", "inf"], "--cfg"),
        "cfg 0": (["--cfg", "0"], "--cfg"),
        "cfg-until 1": (["--cfg-until", "1"], "--cfg-until"),
        "cfg-until negative": (["--cfg-until", "-0.1"], "--cfg-until"),
        "cfg-until nan": (["--cfg-until", "nan"], "--cfg-until"),
        "out existing folder": (["--out", str(full)], "--out"),
        "out txt": (["--out", str(tmp / "x.txt")], "--out"),
        "out no suffix": (["--out", str(tmp / "clip")], "--out"),
        "threads -1": (["--threads", "-1"], "--threads"),
        "threads 0": (["--threads", "0"], "--threads"),
        "frames 16": (["--frames", "16"], "--frames"),
        "steps 0": (["--steps", "0"], "--steps"),
        "steps huge": (["--steps", "1000000000"], "--steps"),
        "solver": (["--solver", "ddim"], "--solver"),
        "width": (["--width", "60"], "--width"),
        "shift nan": (["--shift", "nan"], "--shift"),
        "image not an image": (["--image", str(tmp / "notes.md")], "--image"),
        "image missing": (["--image", str(tmp / "missing.png")], "--image"),
        "empty prompt": (["--prompt", " "], "prompt"),
        "cache negative": (["--cache", "-0.1"], "--cache"),
        "cache nan": (["--cache", "nan"], "--cache"),
        "ulysses 0": (["--ulysses", "0"], "--ulysses"),
    }


CASES = [
    "cfg nan", "cfg inf", "cfg 0", "cfg-until 1", "cfg-until negative", "cfg-until nan",
    "out existing folder", "out txt", "out no suffix", "threads -1",
    "threads 0", "frames 16", "steps 0", "steps huge", "solver", "width", "shift nan",
    "image not an image", "image missing", "empty prompt", "cache negative", "cache nan",
    "ulysses 0"]


@pytest.mark.parametrize("case", CASES)
def test_argument_errors_are_one_clear_line(tmp_path, case):
    args, option = bad_cases(tmp_path)[case]
    result = run_cli("generate", "--prompt", PROMPT, "--out", str(tmp_path / "clip.mp4"), *args)
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert option in err and "wrote" not in result.stdout
    assert not (tmp_path / "clip.mp4").exists()
    if case == "image not an image":
        assert "PNG" in err and "JPEG" in err and "ffmpeg" not in err   # the accepted formats


def test_argument_errors_come_before_torch_is_imported(tmp_path):
    """Every case above, in one process: the error is reported and torch was never imported."""
    code = (
        "import sys, contextlib, io\n"
        "from core.cli import main\n"
        "for args in CASES:\n"
        "    with contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            rc = main(['generate', '--prompt', 'a red circle'] + args)\n"
        "        except SystemExit as exit:\n"
        "            rc = exit.code\n"
        "    assert rc not in (0, None), args\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    assert sorted(CASES) == sorted(bad_cases(tmp_path))
    cases = [args for args, _ in bad_cases(tmp_path).values()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", f"CASES = {cases!r}\n" + code], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_shows_a_meaning_and_the_default_of_every_option():
    result = run_cli("generate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())                # undo argparse's line wrapping
    for option in ("--out", "--image", "--steps", "--shift", "--cfg", "--cfg-until", "--solver", "--seed",
                   "--frames", "--width", "--height", "--threads", "--strict"):
        block = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert "default" in block and len(block) > 30, (option, block)
    for value in (f"(default: {settings.DEFAULT_STEPS})", f"(default: {settings.DEFAULT_CFG})",
                  f"(default: {settings.DEFAULT_CFG_UNTIL})",
                  f"(default: {settings.DEFAULT_SHIFT})", f"(default: {settings.DEFAULT_SOLVER})",
                  f"(default: {settings.FRAMES})", "(default: clip.mp4)"):
        assert value in text, value


def test_solver_names_match_the_solver_registry():
    from core.flow.solvers import SOLVERS

    assert tuple(sorted(SOLVERS)) == settings.SOLVER_NAMES


@needs_model
def test_info_recognises_the_shipped_text_encoder():
    from core.default_model import bundle

    result = run_cli("info", str(bundle.TEXT_PATH))
    assert result.returncode == 0, result.stderr
    assert "text encoder" in result.stdout and "magenta" in result.stdout
    assert "unrecognised" not in result.stdout + result.stderr


@needs_model
@posix_only
def test_png_output_unknown_words_low_steps(tmp_path):
    """`--out clip.png` makes an animated PNG (not an H.264 stream); unknown words and a low step
    count are each one plain line; the file gets the umask's permissions."""
    from PIL import Image

    out = tmp_path / "clip.png"
    result = run_cli("generate", "--prompt", "a purple circle jumping right on a black background",
                     "--out", str(out), "--steps", "2", "--frames", "5", "--solver", "euler",
                     preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} (5 frames")
    lines = result.stderr.strip().splitlines()
    assert "UserWarning" not in result.stderr and "Traceback" not in result.stderr
    unknown = [line for line in lines if "unknown words" in line]
    assert len(unknown) == 1 and "purple, jumping" in unknown[0] and "magenta" in unknown[0]
    assert sum("--steps 2" in line for line in lines) == 1 and len(lines) == 2, lines
    assert any("--steps 2" in line and "--cfg-until 0" in line for line in lines), lines  # the fix
    with Image.open(out) as im:
        assert im.format == "PNG" and im.n_frames == 5
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@needs_model
def test_strict_refuses_unknown_words(tmp_path):
    result = run_cli("generate", "--prompt", "a purple circle", "--strict", "--out",
                     str(tmp_path / "clip.mp4"), "--steps", "2", "--frames", "1")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unknown words in the prompt: purple")
    assert not (tmp_path / "clip.mp4").exists()


@needs_model
def test_image_is_announced_when_resized_and_frames_go_to_a_folder(tmp_path):
    from PIL import Image

    image = np.zeros((96, 128, 3), np.uint8)
    image[30:60, 40:80] = (225, 35, 35)
    Image.fromarray(image).save(tmp_path / "first.png")
    result = run_cli("generate", "--prompt", PROMPT, "--image", str(tmp_path / "first.png"),
                     "--out", f"{tmp_path}/frames/", "--steps", "2", "--frames", "5")
    assert result.returncode == 0, result.stderr
    resized = [line for line in result.stderr.splitlines() if line.startswith("--image")]
    # 128x96 -> scale 64/96 -> 85x64, then the centre 64x64.
    assert resized == [f"--image {tmp_path / 'first.png'}: 128x96 scaled to 85x64 and "
                       f"centre-cropped to 64x64 (the model's size)"]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        f"frame_{i:03d}.png" for i in range(5)]


@needs_model
@posix_only
def test_a_full_disk_fails_the_command_and_keeps_the_old_video(tmp_path):
    """The output file may not grow past 1 KB (RLIMIT_FSIZE, as a full disk): ffmpeg fails, the
    command says so and exits non-zero, and the earlier clip.mp4 is untouched."""
    import resource

    from core.video_io import write_video

    rng = np.random.default_rng(0)
    old = write_video(rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8), tmp_path / "clip.mp4")
    before = old.read_bytes()
    assert len(before) > 1024

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    result = run_cli("generate", "--prompt", PROMPT, "--out", str(old), "--steps", "2",
                     "--frames", "5", preexec_fn=limit)
    assert result.returncode != 0
    assert "wrote" not in result.stdout and "Traceback" not in result.stderr
    assert "could not write" in result.stderr and "left unchanged" in result.stderr
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@needs_model
def test_cache_option_skips_dit_calls_and_stays_close_to_the_uncached_clip():
    """`--cache` (GenerateOptions.cache): fewer DiT forwards than steps, and the clip stays close to
    the uncached one of the same seed (the model card's curve: ~33 dB mean at 0.4; 25 dB here
    leaves room for the worst clips); 0 is the uncached path, call for call."""
    import numpy as np

    from core.default_model import bundle
    from core.generate import GenerateOptions, generate

    model = bundle.load_default_model("cpu")
    calls = []
    hook = model.dit.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        prompt = "a green square moving left on a navy background"
        plain = generate(GenerateOptions(prompt, steps=20, cache=0.0), model)
        uncached_calls, calls[:] = len(calls), []
        cached = generate(GenerateOptions(prompt, steps=20, cache=0.4), model)
    finally:
        hook.remove()
    assert uncached_calls == 20 and len(calls) <= 12, (uncached_calls, len(calls))
    mse = float(((plain.astype(np.float64) - cached.astype(np.float64)) ** 2).mean())
    assert 10 * np.log10(255.0 ** 2 / max(mse, 1e-12)) >= 25.0
