"""Train the default model's small causal VAE (Wan2.1 layout) on the procedural clips.

    python -m core.default_model.train_vae --out /tmp/flowdit_train/vae [--minutes 35] [--resume]

A small dedicated loop (the generic `core.train` loop is for the DiT): reconstruction L1 + MSE on
pixels in [-1, 1] plus a small KL term on the encoder's (mean, log-variance) output, AdamW with a
warm-up and a cosine decay over a wall-clock budget. Clips are rendered on the fly (deterministic
from the step) and cropped around the object; whole 17-frame clips, so that every causal time
convolution also trains with a non-zero past (the streams' later chunks). Every `--every` seconds a checkpoint (weights, optimiser, step) is written
atomically to `<out>/last.pt`, with the held-out PSNR of the real streaming encode/decode.
After training, `export_vae` folds the latent statistics into the weights (see `fold`).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..synthetic.shapes import make_clip, render, spec_for_seed, to_tensor
from ..vae.config import VAEConfig
from ..vae.layers import FeatureCache
from ..vae.model import WanVAEModel

# The issue 6 model's VAE (Wan2.1 layout, narrow, 8 latent channels, identity latent format, x8 /
# x4): the default of this module's and export_vae's command lines. What ships now is the build's
# (core.default_model.build.BUILD_VAE: z 16, x4 / x4), which passes its own configuration.
SHAPES_VAE = VAEConfig(dim=16, dec_dim=16, z_dim=8, dim_mult=(1, 2, 4, 4), num_res_blocks=1)


@dataclass(frozen=True)
class VAETrainConfig:
    minutes: float = 35.0        # wall-clock budget; the learning rate decays over it
    lr: float = 5e-4             # peak AdamW learning rate
    warmup: int = 20             # linear warm-up steps
    batch: int = 2               # clips per step
    window: int = 17             # pixel frames per training clip (4n + 1); at least 9, so that
                                 # the decoder's time convolutions train with a non-zero past
    crop: int = 32               # square crop in pixels (a multiple of 8; 64 = whole frame)
    kl_weight: float = 1e-5      # weight of the mean KL per latent element
    mse_weight: float = 1.0      # L1 + mse_weight * MSE
    edge_weight: float = 0.0     # + edge_weight * L1 of the spatial pixel differences (edge_l1)
    clip_grad: float = 1.0       # gradient-norm clip
    every_s: float = 180.0       # seconds between checkpoints
    seed: int = 0                # data and init seed
    sample_posterior: bool = False  # decode mean + std * noise (True) or the mean (False): with a
                                    # KL weight this small, sampling only slows early training
    steps: int | None = None     # a step budget instead of `minutes` (deterministic schedule:
                                 # the learning rate decays over steps, the run stops there)
    heldout_clips: int = 6       # held-out clips scored at each checkpoint

    def __post_init__(self) -> None:
        if self.window < 1 or (self.window - 1) % 4:
            raise ValueError(f"window must be 4n + 1 frames, got {self.window}")
        if self.crop % 8 or not 8 <= self.crop <= 64:
            raise ValueError(f"crop must be a multiple of 8 in 8..64, got {self.crop}")
        if self.minutes <= 0 or self.lr <= 0 or self.batch < 1:
            raise ValueError(f"minutes, lr and batch must be positive: {self}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be positive, got {self.steps}")


# Initial weight scale relative to 1/sqrt(fan_in). The causal convolutions see zeros in 2 of their
# 3 temporal taps on a stream's first frame, so a variance-preserving gain is about sqrt(3); with
# PyTorch's default initialisation (gain ~0.58, random biases) the signal from the pixels fades
# through the ~30 plain layers, biases dominate, and training sits for hundreds of steps on an
# input-independent plateau (measured: 4 images cannot be overfitted in 60 steps).
INIT_GAIN = 1.7


@torch.no_grad()
def init_for_training(model: WanVAEModel, seed: int = 0) -> None:
    """Scaled-normal convolution weights (INIT_GAIN / sqrt(fan_in)), zero biases, unit norms."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                * (INIT_GAIN / math.sqrt(fan_in)))
            module.bias.zero_()
        elif hasattr(module, "gamma"):
            module.gamma.fill_(1.0)


def training_batch(step: int, cfg: VAETrainConfig) -> torch.Tensor:
    """[B, 3, window, crop, crop] in [-1, 1]: random windows and crops of training clips (pure
    function of step). Crops are placed around the object; their offsets are multiples of 8 so that every crop keeps the phase of the
    stride-2 down-sampling grid it has in a whole frame (the VAE is convolutional, so training on
    crops is 4x cheaper per step at crop 32 and generalises to whole frames)."""
    rng = np.random.default_rng([cfg.seed, step])
    clips = []
    for i in range(cfg.batch):
        spec = spec_for_seed(int(rng.integers(2**31)), "train")
        start = int(rng.integers(0, spec.frames - cfg.window + 1))
        # Crops hold the object (at the window's middle frame) where possible: most of a frame
        # is background, and the object's colour and edges are what the decoder must learn.
        cx, cy = spec.centre(start + cfg.window // 2)
        jitter = rng.uniform(-cfg.crop / 4, cfg.crop / 4, size=2)
        top, left = (int(np.clip(8 * round((c + j - cfg.crop / 2) / 8), 0, 64 - cfg.crop))
                     for c, j in ((cy, jitter[0]), (cx, jitter[1])))
        frames = render(spec)[start:start + cfg.window, top:top + cfg.crop, left:left + cfg.crop]
        clips.append(to_tensor(frames))
    return torch.stack(clips)


def reconstruct(model: WanVAEModel, x: torch.Tensor, generator: torch.Generator | None = None,
                frozen_encoder: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full causal pass with gradients: x [B, 3, T, H, W] -> (recon, mean, logvar)."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_encoder):
        h = model.conv1(model.encoder(x, FeatureCache()), FeatureCache())   # [B, 2z, F, h, w]
    mean, logvar = h.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    z = mean
    if generator is not None:
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * eps
    return decode_with_grad(model, z), mean, logvar


def edge_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the horizontal and vertical neighbour differences of two
    videos [B, C, T, H, W]: small only where the reconstruction's edges sit where the target's do
    (plain L1 and MSE tolerate a blurred edge; most of a blurred shape's error is on its edge)."""
    dx = (recon[..., :, 1:] - recon[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (recon[..., 1:, :] - recon[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def decode_with_grad(model: WanVAEModel, latent: torch.Tensor) -> torch.Tensor:
    """Full causal decoder pass with gradients: raw latent [B, z, F, h, w] -> [B, 3, T, H, W]."""
    return model.decoder(model.conv2(latent, FeatureCache()), FeatureCache())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak 1 on the [0, 1] scale)."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def heldout_psnr(model: WanVAEModel, clips: int = 6) -> tuple[float, float]:
    """(video PSNR, first-frame PSNR) of the streaming encode/decode on held-out 17-frame clips."""
    x = torch.stack([to_tensor(make_clip(1000 + i, "heldout").frames) for i in range(clips)])
    y = model.decode_stream(model.encode_stream(x)).clamp(-1, 1)
    first = model.decode_stream(model.encode_stream(x[:, :, :1])).clamp(-1, 1)
    return psnr(y, x), psnr(first, x[:, :, :1])


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write never corrupts the last good checkpoint


def cosine_lr(peak: float, warmup: int, step: int, frac: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from `peak` to 5% of it as the wall-clock
    fraction `frac` of the budget goes from 0 to 1."""
    decay = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))
    return peak * min(1.0, (step + 1) / warmup) * decay


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    ema: torch.nn.Module | None = None) -> tuple[int, float]:
    """Restore weights, optimiser (and EMA) from `path`; returns (step, elapsed seconds)."""
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    step, elapsed = int(state["step"]), float(state["elapsed"])
    print(f"resumed at step {step} ({elapsed / 60:.1f} min)", flush=True)
    return step, elapsed


def train(out: Path, cfg: VAETrainConfig, resume: bool, init: Path | None = None,
          decoder_only: bool = False, vae_config: VAEConfig = SHAPES_VAE) -> None:
    """Train from scratch, or from `init` (official-key .safetensors); `decoder_only` freezes the
    encoder and `conv1` (their latents are what the DiT was trained on) and tunes the rest."""
    from safetensors.torch import load_file

    out.mkdir(parents=True, exist_ok=True)
    model = WanVAEModel(vae_config)
    if init:
        model.load_state_dict(load_file(str(init)))
    else:
        init_for_training(model, cfg.seed)
    if decoder_only:
        for module in (model.encoder, model.conv1):
            module.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step, elapsed = 0, 0.0
    last = out / "last.pt"
    if resume and last.exists():
        step, elapsed = load_checkpoint(last, model, opt)
    budget = cfg.minutes * 60

    def finished() -> bool:
        return step >= cfg.steps if cfg.steps is not None else time.time() - t0 >= budget

    log = open(out / "log.csv", "a")
    t0, last_ckpt = time.time() - elapsed, time.time()
    model.train()
    while not finished():
        frac = step / cfg.steps if cfg.steps is not None else (time.time() - t0) / budget
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)   # pure function of step
        lr = cosine_lr(cfg.lr, cfg.warmup, step, frac)
        for group in opt.param_groups:
            group["lr"] = lr
        x = training_batch(step, cfg)
        recon, mean, logvar = reconstruct(model, x, gen if cfg.sample_posterior else None,
                                          frozen_encoder=decoder_only)
        l1 = (recon - x).abs().mean()
        mse = (recon - x).pow(2).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = l1 + cfg.mse_weight * mse + cfg.kl_weight * kl
        if cfg.edge_weight:
            loss = loss + cfg.edge_weight * edge_l1(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        opt.step()
        step += 1
        p = 10 * math.log10(4.0 / max(mse.item(), 1e-12))
        print(f"step {step} t {time.time() - t0:.0f}s lr {lr:.2e} l1 {l1.item():.4f} "
              f"mse {mse.item():.5f} psnr {p:.2f} kl {kl.item():.3f} gnorm {gnorm:.2f}", flush=True)
        log.write(f"{step},{time.time() - t0:.1f},{l1.item():.5f},{mse.item():.6f},{kl.item():.4f}\n")
        log.flush()
        done = finished()
        if time.time() - last_ckpt > cfg.every_s or done:
            model.eval()
            video_psnr, first_psnr = heldout_psnr(model, cfg.heldout_clips)
            model.train()
            _save(last, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                         "elapsed": time.time() - t0})
            print(f"checkpoint step {step}: held-out PSNR video {video_psnr:.2f} dB, "
                  f"first frame {first_psnr:.2f} dB", flush=True)
            last_ckpt = time.time()
    log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/flowdit_train/vae")
    parser.add_argument("--minutes", type=float, default=VAETrainConfig.minutes)
    parser.add_argument("--lr", type=float, default=VAETrainConfig.lr)
    parser.add_argument("--batch", type=int, default=VAETrainConfig.batch)
    parser.add_argument("--crop", type=int, default=VAETrainConfig.crop)
    parser.add_argument("--window", type=int, default=VAETrainConfig.window)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--init", default=None, help="start from these weights (.safetensors)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="freeze the encoder (keep the latent space the DiT learned)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = VAETrainConfig(minutes=args.minutes, lr=args.lr, batch=args.batch, crop=args.crop,
                         window=args.window)
    train(Path(args.out), cfg, args.resume, Path(args.init) if args.init else None,
          args.decoder_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
