"""Training data: a folder of captioned clips, encoded once with the VAE and cached on disk.

Layout of the data folder (searched recursively):

    clips/walk.mp4     + clips/walk.txt       a video (mp4, webm, mov, mkv, avi, gif) and its caption
    clips/seq01/*.png  + clips/seq01.txt      a folder of images = one clip, frames in name order
    captions.jsonl                            optional: {"file": "clips/walk.mp4", "caption": "..."}
                                              per line, for clips without a sidecar .txt

Each clip is read, `frame_stride` applied, cut to its first `frames` frames (4n+1), scaled to
cover width x height and centre-cropped, encoded with the VAE, and stored as
`<cache_dir>/<key>.safetensors` ({"latent": [C, F, h, w]}), where the key hashes the clip's bytes,
the settings and the VAE's identity: a changed file, size or VAE re-encodes; nothing else does.
Captions are read fresh on every run (editing one needs no re-encoding).

A clip that cannot be used (unreadable, no caption, too few frames) is logged with the file and
the reason, listed in `LatentDataset.skipped`, and left out; training goes on without it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_video, resize_center_crop
from .checkpointing import load_tensors, remove_orphans, save_tensors

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"
CACHE_VERSION = "1"  # bump when the preprocessing changes, so old caches are not reused


@dataclass(frozen=True)
class DataConfig:
    """How clips become training latents."""

    width: int = 832                      # training width in pixels (a multiple of the VAE's stride)
    height: int = 480                     # training height in pixels (a multiple of the VAE's stride)
    frames: int = 81                      # pixel frames per clip, 4n+1 (1 = single images)
    frame_stride: int = 1                 # keep every k-th source frame (2 halves the frame rate)

    def __post_init__(self) -> None:
        for name in ("width", "height", "frames", "frame_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (self.frames - 1) % 4:
            lo = (self.frames - 1) // 4 * 4 + 1
            raise ValueError(f"frames must be 4n+1 (1, 5, 9, ..., 81), got {self.frames}; use "
                             f"{lo} or {lo + 4}")


@dataclass(frozen=True)
class Clip:
    """One source clip: a video file or a folder of images, and its caption (None if missing)."""

    path: Path
    caption: str | None


@dataclass(frozen=True)
class SkippedClip:
    """A clip left out of training, and why."""

    path: str
    reason: str


def _natural_key(path: Path) -> list[Any]:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", path.name)]


def _read_jsonl(path: Path, skipped: list[SkippedClip]) -> dict[str, str]:
    captions: dict[str, str] = {}
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            reason = f"line {n} is not UTF-8 text; save {path.name} as UTF-8"
            skipped.append(SkippedClip(f"{path}:{n}", reason))
            log.warning("captions: %s:%d: %s", path, n, reason)
            continue
        try:
            row = json.loads(line)
            name, text = row["file"], row.get("caption", row.get("text"))
            if not isinstance(name, str) or not isinstance(text, str):
                raise KeyError("caption")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            reason = f"line {n} is not {{\"file\": ..., \"caption\": ...}} JSON ({err})"
            skipped.append(SkippedClip(f"{path}:{n}", reason))
            log.warning("captions: %s:%d: %s", path, n, reason)
            continue
        captions[os.path.normpath(name)] = text.strip()
    return captions


def find_clips(folder: str | os.PathLike) -> tuple[list[Clip], list[SkippedClip]]:
    """The clips under `folder` with their captions, and the entries that could not be read.

    A clip without a caption is returned with caption None (reported later, when it is used)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    skipped: list[SkippedClip] = []
    jsonl = root / CAPTIONS_FILE
    captions = _read_jsonl(jsonl, skipped) if jsonl.is_file() else {}
    clips: list[Clip] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        files = sorted(filenames)
        images = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if here != root and images and not any(Path(f).suffix.lower() in VIDEO_SUFFIXES for f in files):
            _add_clip(clips, skipped, here, root, captions)
            dirnames.clear()  # an image sequence is one clip: do not look inside it again
            continue
        for f in files:
            suffix = Path(f).suffix.lower()
            if suffix in VIDEO_SUFFIXES or (here == root and suffix in IMAGE_SUFFIXES):
                _add_clip(clips, skipped, here / f, root, captions)
    return clips, skipped


def _add_clip(clips: list[Clip], skipped: list[SkippedClip], path: Path, root: Path,
              captions: dict[str, str]) -> None:
    """Append the clip with its caption, or a SkippedClip when its caption file is unreadable."""
    try:
        clips.append(Clip(path, _caption(path, root, captions)))
    except (UnicodeDecodeError, OSError) as err:
        sidecar = path.with_suffix(".txt") if path.is_file() else path.parent / (path.name + ".txt")
        reason = (f"its caption {sidecar.name} is not UTF-8 text; save it as UTF-8"
                  if isinstance(err, UnicodeDecodeError) else f"its caption cannot be read ({err})")
        skipped.append(SkippedClip(str(path), reason))
        log.warning("skipped clip %s: %s", path, reason)


def _caption(path: Path, root: Path, captions: dict[str, str]) -> str | None:
    sidecar = path.with_suffix(".txt") if path.is_file() else path.parent / (path.name + ".txt")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8").strip()
        return text or None
    return captions.get(os.path.normpath(str(path.relative_to(root))))


def read_clip_frames(path: Path, max_frames: int | None = None) -> np.ndarray:
    """uint8 frames [T, H, W, 3] of a video file or an image-sequence folder."""
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural_key)[:max_frames]
        frames = [read_video(p)[0][0] for p in files]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"{path.name}: the images differ in size ({sorted(shapes)[:2]}); "
                             f"a sequence needs frames of one size")
        return np.stack(frames)
    return read_video(path, max_frames=max_frames)[0]


def clip_to_video(path: Path, config: DataConfig) -> torch.Tensor:
    """The training video of a clip: [3, T, H, W] float32 in [-1, 1], T = config.frames.
    Raises ValueError (naming the file) when it has too few frames or cannot be decoded."""
    needed = (config.frames - 1) * config.frame_stride + 1
    frames = read_clip_frames(path, max_frames=needed)
    if frames.shape[0] < needed:
        raise ValueError(f"has {frames.shape[0]} frames, needs at least {needed} "
                         f"({config.frames} frames at stride {config.frame_stride})")
    frames = frames[:needed:config.frame_stride]                       # [T, H, W, 3]
    images = torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0
    images = resize_center_crop(images, config.width, config.height)    # [T, H, W, 3]
    return images.permute(3, 0, 1, 2) * 2.0 - 1.0                       # [3, T, H, W]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    for file in ([path] if path.is_file() else
                 sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                        key=_natural_key)):
        h.update(file.name.encode() if path.is_dir() else b"")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def vae_fingerprint(vae: Any) -> str:
    """A short identity of a VAE: its configuration and a digest of its weights."""
    h = hashlib.sha256(str(vae.config).encode())
    for tensor in vae.model.state_dict().values():
        flat = tensor.detach().reshape(-1)
        h.update(flat[:64].float().cpu().numpy().tobytes())
        h.update(np.float64(flat.double().sum().item()).tobytes())
    return h.hexdigest()[:16]


def cache_key(path: Path, config: DataConfig, vae_id: str) -> str:
    settings = f"v{CACHE_VERSION}|{config.width}x{config.height}|{config.frames}|{config.frame_stride}|{vae_id}"
    return hashlib.sha256((_file_digest(path) + "|" + settings).encode()).hexdigest()[:32]


def _short_reason(text: str, limit: int = 300) -> str:
    """One readable line: decoders append whole ffmpeg logs; keep the first and last lines."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    short = lines[0] + (f" … {lines[-1]}" if len(lines) > 1 else "") if lines else text
    return short if len(short) <= limit else short[:limit] + "…"


def read_cached_latent(file: Path, source: Path | str) -> torch.Tensor:
    """The cached latent [C, F, h, w] of a clip; ValueError naming the cache file when damaged."""
    try:
        latent = load_tensors(file)["latent"]
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"the cached latent of clip {source} is damaged or missing; delete this "
                         f"cache file: {file} (the clip is encoded again on the next run)") from err
    return latent


def _cache_is_readable(file: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return "latent" in f.keys()
    except Exception:  # any damage: safetensors raises its own error types
        return False


class LatentDataset:
    """Cached clip latents with captions: dataset[i] -> {"latent": [C, F, h, w], "caption": str,
    "path": str}. `skipped` lists the clips left out and why; `report()` says it in words."""

    def __init__(self, entries: list[tuple[Path, str, Path]], skipped: list[SkippedClip]) -> None:
        self.entries = entries                    # (latent file, caption, source clip)
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        file, caption, source = self.entries[i]
        return {"latent": read_cached_latent(file, source), "caption": caption, "path": str(source)}

    def report(self) -> str:
        lines = [f"{len(self.entries)} clips ready, {len(self.skipped)} skipped"]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def cache_latents(folder: str | os.PathLike, vae: Any, cache_dir: str | os.PathLike,
                  config: DataConfig, *, tiling: Any = None) -> LatentDataset:
    """Encode every usable clip under `folder` once (reusing `cache_dir`), return the dataset.

    vae: a loaded `core.vae.WanVAE` (its device and dtype are used). Raises ValueError when the
    training size does not fit the VAE or when no clip at all is usable."""
    s = vae.spatial_stride
    if config.width % s or config.height % s:
        raise ValueError(f"training size {config.width}x{config.height} must be a multiple of the "
                         f"VAE's stride {s} in both directions")
    clips, skipped = find_clips(folder)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    remove_orphans(cache)
    vae_id = vae_fingerprint(vae)
    entries = []
    for clip in clips:
        try:
            if clip.caption is None:
                raise ValueError(f"no caption: add {clip.path.stem}.txt next to it or a line in "
                                 f"{CAPTIONS_FILE}")
            file = cache / f"{cache_key(clip.path, config, vae_id)}.safetensors"
            if file.is_file() and not _cache_is_readable(file):
                log.warning("the cache file %s of clip %s is damaged; encoding the clip again",
                            file, clip.path)
                file.unlink()
            if not file.is_file():
                video = clip_to_video(clip.path, config)
                with torch.no_grad():
                    latent = vae.encode(video[None].to(vae.device, vae.dtype), tiling=tiling)[0]
                save_tensors({"latent": latent.float()}, file,
                             metadata={"source": clip.path.name, "settings": str(config)})
            entries.append((file, clip.caption, clip.path))
        except (ValueError, OSError, RuntimeError) as err:
            reason = _short_reason(str(err).removeprefix(f"{clip.path.name}: "))
            skipped.append(SkippedClip(str(clip.path), reason))
            log.warning("skipped clip %s: %s", clip.path, reason)
    if not entries:
        details = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in skipped[:5])
        raise ValueError(f"no usable clips in {folder} ({len(clips)} found){': ' + details if details else ''}")
    return LatentDataset(entries, skipped)
