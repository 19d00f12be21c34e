"""Tune the default VAE's decoder, encoder frozen: first the first-frame path, then the rest.

    # phase 1: whole single frames only (the TI2V first-frame path)
    python -m core.default_model.tune_decoder --out /tmp/flowdit_train/vae_tune_img --clips 0 \
        --minutes 68
    python -m core.default_model.export_vae --ckpt /tmp/flowdit_train/vae_tune_img/last.pt \
        --no-fold \
        --out /tmp/flowdit_train/p1.safetensors
    # phase 2: later frames only; the first decoded frame stays bit-identical
    python -m core.default_model.tune_decoder --out /tmp/flowdit_train/vae_p2 \
        --init /tmp/flowdit_train/p1.safetensors --keep-first-frame --clips 2 --latent-frames 5 \
        --lr 2e-4 --minutes 12
    python -m core.default_model.export_vae --ckpt /tmp/flowdit_train/vae_p2/last.pt --no-fold

Why: in TI2V the first output frame is the decoder's first chunk applied to the encoder's latent
of the given image, so its fidelity is the single-image round trip of the VAE. `train_vae` sees a
first frame once per 17-frame clip; here whole single frames (T = 1: every causal time convolution
sees only its zero-padded past, the time up-sampling is skipped) train that path directly. That
costs the later frames a little, since they share the current-time taps. Phase 2 then trains only
the weights that the first frame never reaches (the past taps of the causal time convolutions and
the time up-sampling convolutions, found as the exact zeros of a first-frame gradient), on video
crops, which restores the later frames while the first frame cannot change. A mixed run (images
and video crops in every step, the default `--clips 1`) is also possible; it improved the first
frame about half as fast in the same time.

The encoder and `conv1` stay frozen, so the latent space the DiT was trained on is unchanged; the
encoder's latents are computed once and cached. Checkpoints (`<out>/last.pt`: weights, EMA weights,
optimiser, step, elapsed time) are written atomically every 5 minutes with held-out PSNRs;
the exported weights are the EMA.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..synthetic.shapes import make_clip, render, spec_for_seed
from ..vae.config import VAEConfig
from ..vae.layers import CausalConv3d
from ..vae.model import WanVAEModel
from .bundle import VAE_PATH
from .train_vae import (SHAPES_VAE, _save, cosine_lr, decode_with_grad, heldout_psnr,
                        load_checkpoint, psnr)


@dataclass(frozen=True)
class TuneConfig:
    minutes: float = 60.0       # wall-clock budget; the learning rate decays (cosine) over it
    lr: float = 4e-4            # peak AdamW learning rate
    warmup: int = 20
    images: int = 16            # whole 64x64 single frames per step (the first-frame path)
    clips: int = 1              # video crops per step (the later chunks)
    latent_frames: int = 3      # latent frames per video crop, from the stream's start (9 frames)
    crop: int = 4               # video crop in latent cells (x the VAE's spatial stride in pixels)
    ema: float = 0.998
    clip_grad: float = 1.0
    every_s: float = 300.0
    keep_first_frame: bool = False  # train only weights the first frame does not depend on
    max_steps: int | None = None  # stop here even if time is left (tests)
    steps: int | None = None    # a step budget instead of `minutes` (deterministic schedule)
    seed: int = 0               # batch sampling seed
    heldout_images: int = 48    # held-out single frames scored at each checkpoint
    heldout_clips: int = 6      # held-out whole clips scored at each checkpoint

    def __post_init__(self) -> None:
        if self.latent_frames < 1:
            raise ValueError(f"latent_frames must be at least 1, got {self.latent_frames}")
        if self.images < 0 or self.clips < 0 or self.images + self.clips == 0:
            raise ValueError(f"need images or clips per step, got {self.images} and {self.clips}")
        if not 1 <= self.crop <= 16:
            raise ValueError(f"crop is in latent cells, 1..16, got {self.crop}")


@dataclass(frozen=True)
class Cache:
    """Training frames and their frozen-encoder latents (from the training split only)."""
    images: torch.Tensor        # uint8 [N, H, W, 3]: random frames of training clips
    image_latents: torch.Tensor  # [N, z, 1, h, w]: each encoded as a single frame
    clips: torch.Tensor         # uint8 [K, T, H, W, 3]
    clip_latents: torch.Tensor  # [K, z, F, h, w]
    centres: torch.Tensor       # [K, T, 2] object centre (x, y) per frame, pixels


@torch.no_grad()
def build_cache(model: WanVAEModel, n_clips: int, images_per_clip: int, seed0: int = 200_000,
                batch: int = 16) -> Cache:
    rng = np.random.default_rng(seed0)
    clips, centres, images = [], [], []
    for k in range(n_clips):
        spec = spec_for_seed(seed0 + k, "train")
        frames = render(spec)
        clips.append(frames)
        centres.append([spec.centre(t) for t in range(spec.frames)])
        for t in rng.choice(spec.frames, size=images_per_clip, replace=False):
            images.append(frames[t])
    clips_u8 = torch.from_numpy(np.stack(clips))
    images_u8 = torch.from_numpy(np.stack(images))

    def encode(frames_u8: torch.Tensor) -> torch.Tensor:        # [b, T, H, W, 3] -> latents
        return model.encode_stream(to_tensor_batch(frames_u8))

    clip_latents = torch.cat([encode(clips_u8[i:i + batch]) for i in range(0, n_clips, batch)])
    image_latents = torch.cat([encode(images_u8[i:i + 4 * batch, None])
                               for i in range(0, len(images_u8), 4 * batch)])
    return Cache(images_u8, image_latents, clips_u8, clip_latents,
                 torch.tensor(np.array(centres), dtype=torch.float32))


def to_tensor_batch(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1]."""
    return frames_u8.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def video_batch(cache: Cache, cfg: TuneConfig,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent crops [B, z, F, c, c] around the object and their pixels [B, 3, T, sc, sc] (s: the
    VAE's spatial stride)."""
    n, _, f, h, w = cache.clip_latents.shape
    stride = cache.clips.shape[2] // h
    ts = (cache.clips.shape[1] - 1) // (f - 1)      # the VAE's temporal stride (4n+1 -> n+1 for 4)
    lat, pix = [], []
    for k in torch.randint(0, n, (cfg.clips,), generator=g).tolist():
        t = int(torch.randint(0, ts * (cfg.latent_frames - 1) + 1, (1,), generator=g))
        cx, cy = (cache.centres[k, t] / stride).tolist()
        jx, jy = (torch.rand(2, generator=g) - 0.5) * cfg.crop / 2
        top = int(np.clip(round(cy + float(jy) - cfg.crop / 2), 0, h - cfg.crop))
        left = int(np.clip(round(cx + float(jx) - cfg.crop / 2), 0, w - cfg.crop))
        frames = ts * (cfg.latent_frames - 1) + 1
        rows, cols = slice(top, top + cfg.crop), slice(left, left + cfg.crop)
        pixel_rows = slice(stride * top, stride * rows.stop)
        pixel_cols = slice(stride * left, stride * cols.stop)
        lat.append(cache.clip_latents[k, :, :cfg.latent_frames, rows, cols])
        pix.append(cache.clips[k, :frames, pixel_rows, pixel_cols])
    return torch.stack(lat), to_tensor_batch(torch.stack(pix))


@torch.no_grad()
def heldout_scores(model: WanVAEModel, images: int = 48, clips: int = 6) -> dict[str, float]:
    """Mean per-image PSNR of single held-out frames, and the PSNR of whole held-out clips."""
    rng = np.random.default_rng(7)
    frames = [make_clip(3000 + i, "heldout").frames[int(rng.integers(17))] for i in range(images)]
    x = to_tensor_batch(torch.from_numpy(np.stack(frames))[:, None])
    y = model.decode_stream(model.encode_stream(x)).clamp(-1, 1)
    per = [psnr(y[i:i + 1], x[i:i + 1]) for i in range(images)]
    return {"image_mean": float(np.mean(per)), "image_min": float(np.min(per)),
            "video": heldout_psnr(model, clips)[0]}


def first_frame_free(model: WanVAEModel, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: 0/1 mask} of the decoder weights that the first decoded frame does not depend on:
    the past taps of the causal time convolutions and the time up-sampling convolutions, which a
    stream's first chunk never uses. Among the weights of causal convolutions with a time kernel
    (the only place time enters), an element is free when the gradient of a random projection of
    the first frame (decoded from `latents[:, :, :1]`) is exactly zero on two projections.
    Elsewhere exact zeros are numerical accidents of invariances (the attention's key bias shifts
    every logit of a row equally) and such weights would still change the frame by rounding."""
    temporal = {f"{prefix}.{name}" for prefix, module in model.named_modules()
                if isinstance(module, CausalConv3d) and module.kernel_size[0] > 1
                for name, _ in module.named_parameters(recurse=False)}
    free: dict[str, torch.Tensor] = {}
    for seed in range(2):
        model.zero_grad(set_to_none=True)
        y = decode_with_grad(model, latents[:, :, :1])
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        (y * weights).sum().backward()
        for name, param in model.named_parameters():
            if param.requires_grad and name in temporal:
                zero = torch.ones_like(param) if param.grad is None else (param.grad == 0).float()
                free[name] = free.get(name, zero) * zero
    model.zero_grad(set_to_none=True)
    return {name: mask for name, mask in free.items() if bool(mask.any())}


def tune(out: Path, init: Path, cfg: TuneConfig, resume: bool = False, n_clips: int = 400,
         images_per_clip: int = 8, vae_config: VAEConfig = SHAPES_VAE) -> None:
    from safetensors.torch import load_file

    out.mkdir(parents=True, exist_ok=True)
    model = WanVAEModel(vae_config)
    model.load_state_dict(load_file(str(init)))
    model.eval()
    cache_path = out / f"cache_{n_clips}x{images_per_clip}.pt"
    if cache_path.exists():
        cache = Cache(**torch.load(cache_path, weights_only=True))
    else:
        t0 = time.time()
        cache = build_cache(model, n_clips, images_per_clip)
        _save(cache_path, cache.__dict__)
        print(f"cached {len(cache.images)} images and {n_clips} clips in {time.time() - t0:.0f}s",
              flush=True)
    if cfg.clips and cfg.latent_frames > cache.clip_latents.shape[2]:
        raise ValueError(f"latent_frames {cfg.latent_frames} is more than the "
                         f"{cache.clip_latents.shape[2]} latent frames of a "
                         f"{cache.clips.shape[1]}-frame clip")
    for module in (model.encoder, model.conv1):
        module.requires_grad_(False)
    if cfg.keep_first_frame:
        masks = first_frame_free(model, cache.image_latents[:8])
        for name, param in model.named_parameters():
            if name in masks:
                param.register_hook(lambda grad, mask=masks[name]: grad * mask)
            else:
                param.requires_grad_(False)
        print(f"{sum(int(m.sum()) for m in masks.values())} weights in {len(masks)} tensors do "
              "not reach the first frame; only those train", flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = copy.deepcopy(model).requires_grad_(False)
    step, elapsed = 0, 0.0
    last = out / "last.pt"
    if resume and last.exists():
        step, elapsed = load_checkpoint(last, model, opt, ema)
    else:
        print("start", heldout_scores(model, cfg.heldout_images, cfg.heldout_clips), flush=True)
    budget = cfg.minutes * 60
    t0, last_ckpt = time.time() - elapsed, time.time()
    if cfg.steps is not None and step >= cfg.steps:
        return
    model.train()
    while True:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)     # pure function of step
        frac = (step / cfg.steps if cfg.steps is not None
                else min(1.0, (time.time() - t0) / budget))
        lr = cosine_lr(cfg.lr, cfg.warmup, step, frac)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = torch.zeros(())
        if cfg.images:
            idx = torch.randint(0, len(cache.images), (cfg.images,), generator=g)
            x_img = to_tensor_batch(cache.images[idx][:, None])
            d_img = decode_with_grad(model, cache.image_latents[idx]) - x_img
            loss = loss + d_img.abs().mean() + d_img.pow(2).mean()
        if cfg.clips:
            z_vid, x_vid = video_batch(cache, cfg, g)
            d_vid = decode_with_grad(model, z_vid) - x_vid
            loss = loss + d_vid.abs().mean() + d_vid.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema)
        step += 1
        now = time.time() - t0
        if step % 20 == 0:
            p_img = 10 * math.log10(4.0 / d_img.pow(2).mean().item()) if cfg.images else math.nan
            p_vid = 10 * math.log10(4.0 / d_vid.pow(2).mean().item()) if cfg.clips else math.nan
            print(f"step {step} t {now:.0f}s lr {lr:.2e} image psnr {p_img:.2f} "
                  f"video-crop psnr {p_vid:.2f} gnorm {gnorm:.2f}", flush=True)
        done = ((now >= budget if cfg.steps is None else step >= cfg.steps)
                or (cfg.max_steps is not None and step >= cfg.max_steps))
        if done or time.time() - last_ckpt > cfg.every_s:
            _save(last, {"model": model.state_dict(), "ema": ema.state_dict(),
                         "opt": opt.state_dict(), "step": step, "elapsed": now})
            scores = heldout_scores(ema, cfg.heldout_images, cfg.heldout_clips)
            print(f"checkpoint step {step}: held-out (EMA) {scores}", flush=True)
            last_ckpt = time.time()
        if done:
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/flowdit_train/vae_tune")
    parser.add_argument("--init", default=str(VAE_PATH), help="VAE weights to start from")
    parser.add_argument("--minutes", type=float, default=TuneConfig.minutes)
    parser.add_argument("--lr", type=float, default=TuneConfig.lr)
    parser.add_argument("--images", type=int, default=TuneConfig.images)
    parser.add_argument("--clips", type=int, default=TuneConfig.clips,
                        help="video crops per step (0: single images only)")
    parser.add_argument("--latent-frames", type=int, default=TuneConfig.latent_frames,
                        help="latent frames per video crop (3: 9 frames, 5: 17 frames)")
    parser.add_argument("--keep-first-frame", action="store_true",
                        help="train only the weights that the first decoded frame does not use "
                             "(video crops only; the first frame stays bit-identical)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune(Path(args.out), Path(args.init), TuneConfig(
        minutes=args.minutes, lr=args.lr, images=0 if args.keep_first_frame else args.images,
        clips=args.clips, latent_frames=args.latent_frames,
        keep_first_frame=args.keep_first_frame), args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
