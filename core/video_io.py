"""Video files in and out: ffmpeg (imageio-ffmpeg's bundled binary; no system install) for video
containers, Pillow for GIF, PNG and WebP.

Frames are uint8 arrays [T, H, W, 3] (RGB). Conversions to and from the model's tensors
([B, 3, T, H, W] in [-1, 1], or ComfyUI's IMAGE [T, H, W, 3] in [0, 1]) live here too.
Importing this module does not import torch (the command line checks `--out` before torch loads).

`write_video` picks the format from the path (`output_kind`):

    clip.mp4 / .mov / .mkv   H.264 video (yuv420p)            clip.webm   VP9 video
    clip.gif                 animated GIF                      clip.png    animated PNG (APNG)
    clip.webp                animated WebP                     frames/     one PNG per frame
    frames/%03d.png          one PNG per frame (a printf-style number field, counted from 0)

Anything else is refused before any work. Frame delays: GIF stores them in 10 ms units and WebP
in whole milliseconds, so each frame's delay is the rounded end time minus the rounded start time
(16 fps in a GIF: 60, 70, 60, 60, 60, 70, ... ms); the clip's total length stays exact to half a
unit and the average rate is exact. APNG stores exact fractions (1/16 s).

Writing is all-or-nothing: the file (or the folder of frames) is written under a temporary name
next to the target, checked (the writer's exit status, a non-empty file, re-opened and the frames
counted), and only then renamed over the target. On any failure the target, if it existed, is left
as it was and an `OutputError` says why. New files get the usual permissions (the umask applies).
"""
from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: writing files needs no torch (the CLI checks before importing it)
    import torch

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Video output suffix -> ffmpeg muxer (the codec: VP9 for webm, H.264 otherwise).
_FFMPEG_OUTPUTS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
# A printf-style frame-number field (%d, %03d) in a file name, as ffmpeg's image2 pattern.
_FRAME_FIELD = re.compile(r"%0?(\d*)d")
OUTPUT_HELP = (".mp4, .mov, .mkv or .webm (video), .gif, .png or .webp (animated image), a folder "
               "ending in '/' (one PNG per frame) or a pattern such as frames/%03d.png")


class OutputError(OSError):
    """A video could not be written (the writer failed or its result did not check out). Any file
    that was there before is unchanged."""


def output_kind(path: str | os.PathLike) -> str:
    """What `write_video` makes of `path`: 'video' | 'gif' | 'apng' | 'webp' | 'folder' | 'pattern'.

    A folder is a path ending in a separator or an existing directory; a pattern is a .png name
    with one %d-style field. Raises ValueError (naming the accepted forms) for anything else.
    """
    text = os.fspath(path)
    p = Path(text)
    suffix = p.suffix.lower()
    if text.endswith(("/", os.sep)):
        return "folder"
    if p.is_dir():
        if suffix in _FFMPEG_OUTPUTS or suffix in (".gif", ".png", ".webp"):
            raise ValueError(f"{text}: is a folder; name a file such as clip.mp4")
        return "folder"
    fields = _FRAME_FIELD.findall(p.name.replace("%%", ""))
    if fields or "%" in p.name.replace("%%", ""):
        if len(fields) != 1 or p.name.replace("%%", "").count("%") != 1 or suffix != ".png":
            raise ValueError(f"{text}: a frame pattern needs exactly one number field and the "
                             f".png suffix, e.g. frames/%03d.png")
        return "pattern"
    if suffix in _FFMPEG_OUTPUTS:
        return "video"
    kinds = {".gif": "gif", ".png": "apng", ".webp": "webp"}
    if suffix in kinds:
        return kinds[suffix]
    what = f"'{suffix}'" if suffix else "a name without a suffix"
    raise ValueError(f"{text}: cannot write {what}; use {OUTPUT_HELP}")


def check_output_path(path: str | os.PathLike) -> str:
    """`output_kind(path)` after checking that the output can go there without destroying anything
    but the file it names (ValueError otherwise): a file name must not be a folder, a folder of
    frames must be new or empty, and no parent may be a file."""
    kind = output_kind(path)
    p = Path(path)
    target = p if kind == "folder" else p.parent
    for parent in (target, *target.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{os.fspath(path)}: {parent} is a file, not a folder")
            break
    if kind == "folder" and p.is_dir() and any(p.iterdir()):
        raise ValueError(f"{os.fspath(path)}: the folder already holds files; name a new or "
                         f"empty folder for the frames (nothing in it is overwritten), or a file "
                         f"such as clip.mp4")
    return kind


def gif_delays_ms(frames: int, fps: float, unit_ms: int) -> list[int]:
    """Per-frame delays in whole multiples of `unit_ms` whose running sum stays within half a unit
    of i * 1000 / fps (each delay = rounded end time - rounded start time)."""
    ends = [math.floor((i * 1000.0 / fps) / unit_ms + 0.5) * unit_ms for i in range(frames + 1)]
    return [b - a for a, b in zip(ends, ends[1:])]


def write_video(frames, path: str | os.PathLike, fps: float = 16.0, quality: int = 8) -> Path:
    """Write uint8 frames [T, H, W, 3] (or floats in [0, 1], or a torch tensor) to `path` in the
    format its name asks for (module docstring), atomically. `quality` is 0..10 (10 best), for
    the video codecs. Returns the path. Raises ValueError for bad frames or a path that cannot be
    written (before any work) and `OutputError` when the writer fails (the old file stays)."""
    kind = check_output_path(path)
    frames = _as_uint8_frames(frames)
    if not 1.0 <= fps <= 240.0 or not math.isfinite(fps):
        raise ValueError(f"fps must be between 1 and 240, got {fps}")
    if kind == "gif" and fps > 50:
        raise ValueError(f"a GIF cannot play {fps:g} fps (delays are in 10 ms units and viewers "
                         f"slow delays under 20 ms down to 100 ms); use .mp4 or at most 50 fps")
    if not 0 <= quality <= 10:
        raise ValueError(f"quality must be between 0 and 10, got {quality}")
    path = Path(path)
    if kind == "folder":
        _write_frame_folder(frames, path)
        return path
    if kind == "pattern":
        _write_frame_pattern(frames, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".partial-{secrets.token_hex(4)}-{path.name}"
    try:
        if kind == "video":
            _write_ffmpeg(frames, tmp, path.suffix.lower(), fps, quality)
        else:
            _write_animated_image(frames, tmp, kind, fps)
        os.replace(tmp, path)
    except OutputError as err:
        raise OutputError(f"could not write {path}: {err}" + _kept(path)) from None
    except OSError as err:   # disk full, permissions, ...: name the file and what was kept
        raise OutputError(f"could not write {path}: {err.strerror or err}" + _kept(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _kept(path: Path) -> str:
    return "; the existing file was left unchanged" if path.exists() else ""


def _write_ffmpeg(frames: np.ndarray, tmp: Path, suffix: str, fps: float, quality: int) -> None:
    """Pipe raw RGB frames into ffmpeg; check its exit status, the file, and the frame count."""
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    # yuv420p needs even sizes; pad by edge replication rather than fail on odd sizes.
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        t, h, w, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    if suffix == ".webm":
        codec = ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", str(round(50 - 2 * quality)),
                 "-row-mt", "1"]
    else:
        codec = ["-c:v", "libx264", "-crf", str(round(36 - 1.8 * quality)), "-preset", "medium"]
        if suffix in (".mp4", ".mov"):
            codec += ["-movflags", "+faststart"]
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(rate), "-i", "-",
           "-an", *codec, "-pix_fmt", "yuv420p", "-f", _FFMPEG_OUTPUTS[suffix], str(tmp)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass                                  # ffmpeg stopped early: its status says why
        except BaseException:                     # Ctrl-C, a cancel: do not leave ffmpeg waiting
            proc.kill()
            proc.wait()
            raise
        status = proc.wait()
        log.seek(0)
        lines = log.read().decode("utf-8", "replace").strip().splitlines()
    if status != 0:
        reason = f"signal {-status}" if status < 0 else f"status {status}"
        raise OutputError(f"ffmpeg exited with {reason}" + (f" ({lines[-1]})" if lines else ""))
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise OutputError("ffmpeg wrote an empty file")
    try:
        count, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
    except (RuntimeError, OSError) as err:
        raise OutputError(f"the written file does not decode ({err})") from None
    if count != t:
        raise OutputError(f"the written file holds {count} frames instead of {t}")


def _write_animated_image(frames: np.ndarray, tmp: Path, kind: str, fps: float) -> None:
    """GIF / APNG / WebP through Pillow; re-opened to check size, frames and total duration."""
    from PIL import Image

    t, h, w, _ = frames.shape
    if kind == "gif":
        delays: list[float] = gif_delays_ms(t, fps, 10)
    elif kind == "webp":
        delays = gif_delays_ms(t, fps, 1)
    else:
        delays = [1000.0 / fps] * t                   # APNG: exact fractions of a second
    images = [Image.fromarray(f) for f in frames]
    options = {"loop": 0}
    if kind == "webp":
        options.update(lossless=True, quality=0, method=0)   # fastest lossless
    fmt = {"gif": "GIF", "apng": "PNG", "webp": "WEBP"}[kind]
    images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:],
                   duration=delays if t > 1 else delays[0], **options)
    _check_animated_image(tmp, w, h, t, sum(delays), tolerance_ms=1.0)


def _check_animated_image(path: Path, w: int, h: int, t: int, total_ms: float,
                          tolerance_ms: float) -> None:
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as im:
            size, count, duration = im.size, 0, 0.0
            for frame in ImageSequence.Iterator(im):
                frame.load()
                count += 1
                duration += float(frame.info.get("duration") or 0.0)
    except OSError as err:
        raise OutputError(f"the written file does not decode ({err})") from None
    # Pillow merges identical consecutive frames into one longer frame, so check the total time.
    if size != (w, h) or not 1 <= count <= t or (t > 1 and abs(duration - total_ms) > tolerance_ms):
        raise OutputError(f"the written file reads back as {count} frames of {size[0]}x{size[1]}, "
                          f"{duration:.0f} ms, instead of {t} frames of {w}x{h}, {total_ms:.0f} ms")


def _frame_names(t: int, pattern: str) -> list[str]:
    return [pattern % i for i in range(t)]


def _write_pngs(frames: np.ndarray, files: list[Path]) -> None:
    from PIL import Image

    h, w = frames.shape[1:3]
    for frame, file in zip(frames, files):
        Image.fromarray(frame).save(file, format="PNG")
        with Image.open(file) as im:
            if im.size != (w, h):
                raise OutputError(f"{file.name} reads back as {im.size[0]}x{im.size[1]}")


def _write_frame_folder(frames: np.ndarray, folder: Path) -> None:
    """One PNG per frame, frame_000.png ..., into a new or empty folder (written next to it under
    a temporary name, then renamed)."""
    digits = max(3, len(str(len(frames) - 1)))
    folder = Path(os.path.abspath(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".partial-{secrets.token_hex(4)}-{folder.name}"
    tmp.mkdir()                                   # mode 0o777 minus the umask
    try:
        names = _frame_names(len(frames), f"frame_%0{digits}d.png")
        _write_pngs(frames, [tmp / n for n in names])
        if folder.is_dir():
            folder.rmdir()                        # empty (checked); rename cannot replace it
        os.rename(tmp, folder)
    except OutputError as err:
        raise OutputError(f"could not write {folder}: {err}") from None
    except OSError as err:
        raise OutputError(f"could not write {folder}: {err.strerror or err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_frame_pattern(frames: np.ndarray, pattern: Path) -> None:
    """One PNG per frame named by the pattern (numbers from 0); all written under temporary
    names first, then renamed, so a failure leaves the earlier files as they were."""
    pattern.parent.mkdir(parents=True, exist_ok=True)
    names = _frame_names(len(frames), pattern.name)
    token = secrets.token_hex(4)
    tmps = [pattern.parent / f".partial-{token}-{n}" for n in names]
    try:
        _write_pngs(frames, tmps)
        for tmp, name in zip(tmps, names):
            os.replace(tmp, pattern.parent / name)
    except OutputError as err:
        raise OutputError(f"could not write {pattern}: {err}") from None
    except OSError as err:
        raise OutputError(f"could not write {pattern}: {err.strerror or err}") from err
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Read a video (or GIF, or a single image) as uint8 frames [T, H, W, 3] and its fps.

    Raises ValueError naming the file when it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix == ".gif":
        return _read_with_pillow(path, max_frames)
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        w, h = meta["size"]
        fps = float(meta.get("fps") or 16.0)
        frames = []
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if max_frames is not None and len(frames) >= max_frames:
                reader.close()
                break
    except (RuntimeError, OSError, StopIteration, KeyError) as err:
        raise ValueError(f"{path.name}: cannot decode video ({err})") from err
    if not frames:
        raise ValueError(f"{path.name}: the video has no frames")
    return np.stack(frames), fps


def _read_with_pillow(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB")))
                durations.append(float(frame.info.get("duration") or 0.0))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path.name}: cannot decode image ({err})") from err
    # The mean delay: GIF/WebP delays are rounded per frame (see gif_delays_ms).
    total = sum(durations)
    return np.stack(frames), (1000.0 * len(durations) / total) if total > 0 else 16.0


def _as_uint8_frames(frames) -> np.ndarray:
    if hasattr(frames, "detach"):                 # a torch tensor (torch is not imported here)
        frames = frames.detach().cpu().float().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"there are no frames to write (shape {tuple(frames.shape)}); check the "
                         f"node or step that made the images")
    if frames.dtype != np.uint8:
        if not np.isfinite(frames).all():
            raise ValueError("the frames contain NaN or inf values (the decoder or an earlier step "
                             "produced non-finite numbers); nothing was written")
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return frames


def video_to_image_batch(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> ComfyUI IMAGE [B*T, H, W, 3] in [0, 1] (float32)."""
    from einops import rearrange

    images = rearrange(video.float(), "B C T H W -> (B T) H W C")
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def image_batch_to_video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [T, H, W, C>=3] in [0, 1] -> [1, 3, T, H, W] in [-1, 1] (float32)."""
    from einops import rearrange

    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"expected an IMAGE batch [T, H, W, 3], got shape {tuple(images.shape)}")
    return rearrange(images[..., :3].float() * 2.0 - 1.0, "T H W C -> 1 C T H W")


def resize_center_crop(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale an IMAGE batch [T, H, W, C] to cover width x height, then crop the centre.

    Keeps the aspect ratio (no stretching); bilinear with antialiasing when shrinking.
    """
    import torch.nn.functional as F
    from einops import rearrange

    t, h, w, c = images.shape
    if (h, w) == (height, width):
        return images
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    x = rearrange(images.float(), "T H W C -> T C H W")
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return rearrange(x, "T C H W -> T H W C").clamp(0.0, 1.0)
