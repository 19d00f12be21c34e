"""Video files in and out through imageio-ffmpeg (its bundled ffmpeg binary; no system install).

Frames are uint8 arrays [T, H, W, 3] (RGB). Conversions to and from the model's tensors
([B, 3, T, H, W] in [-1, 1], or ComfyUI's IMAGE [T, H, W, 3] in [0, 1]) live here too.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: float = 16.0,
                quality: int = 8) -> Path:
    """Write uint8 frames [T, H, W, 3] as an H.264 MP4 (or GIF by suffix) atomically.

    The file appears only when complete (written to a temporary name, then renamed), so a failure
    midway never leaves a truncated video in place of an earlier one. `quality` is 0..10 (10 best).
    """
    import imageio_ffmpeg

    frames = _as_uint8_frames(frames)
    path = Path(path)
    if not 1.0 <= fps <= 240.0:
        raise ValueError(f"fps must be between 1 and 240, got {fps}")
    t, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix or ".mp4", dir=path.parent, prefix=".partial-")
    os.close(fd)
    try:
        if path.suffix.lower() == ".gif":
            _write_gif(frames, tmp, fps)
        else:
            # yuv420p needs even sizes; pad by edge replication rather than fail on odd sizes.
            ph, pw = h % 2, w % 2
            if ph or pw:
                frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
            writer = imageio_ffmpeg.write_frames(
                tmp, (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264",
                pix_fmt_out="yuv420p", quality=quality, macro_block_size=1,
                ffmpeg_log_level="error")
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
            writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_gif(frames: np.ndarray, path: str, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)


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
            duration = im.info.get("duration") or 62.5
            frames = []
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB")))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path.name}: cannot decode image ({err})") from err
    return np.stack(frames), 1000.0 / float(duration)


def _as_uint8_frames(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
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
