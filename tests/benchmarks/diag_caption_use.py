"""Where a default-model build decides the prompted direction, and whether its DiT uses the words.

    python tests/benchmarks/diag_caption_use.py                      # the shipped default model
    python tests/benchmarks/diag_caption_use.py --model runs/default_model/export

1. Direction SNR of the VAE's latent space. Two clips that differ only in their direction have
   latents x0 and x0'. Noised to x_σ = (1 − σ)x0 + σε, their means differ by (1 − σ)·||x0 − x0'||
   under noise of std σ per value, so a caption's direction can only be told apart in x_σ
   (two-class d' = 2) while (1 − σ)/σ · ||Δ|| ≥ 2, i.e. for σ ≤ 1 / (1 + 2/||Δ||). Above that
   sigma every direction looks the same, and the DiT must choose one from the words alone;
   training sigmas that rarely reach that band leave the choice unlearned.
2. Word use: the x0-prediction error on frames 1-4 (the motion; frame 0 is the start) of training
   clips with the right caption, against the same inputs with the direction word (or the colour
   word) swapped for another, per sigma. A DiT that ignores a word scores the same with it
   swapped (difference ~0); one that uses it gets worse with the wrong word.
Prints numbers only (a diagnostic, not a test).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.default_model import bundle  # noqa: E402
from core.synthetic.shapes import (COLOURS, DIRECTIONS, ClipSpec, make_clip, render,  # noqa: E402
                                   to_tensor)

SIGMAS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


def load(folder: Path | None) -> bundle.DefaultModel:
    if folder is None:
        return bundle.load_default_model()
    from core.dit.loader import load_dit
    from core.text.encoder import load_text_encoder
    from core.vae.loader import load_vae

    pick = {p.parent.name: folder / p.parent.name / p.name for p in bundle.FILES}
    return bundle.DefaultModel(dit=load_dit(pick["diffusion_models"], dtype=torch.float32),
                               vae=load_vae(pick["vae"]),
                               text=load_text_encoder(pick["text_encoders"]))


@torch.no_grad()
def direction_snr(vae) -> tuple[float, float]:
    """(mean ||Δ||² between the latents of one clip moving in two directions, the sigma of d' = 2),
    over 3 shapes x 2 sizes x the 6 direction pairs, all from the frame centre."""
    d2 = []
    for shape, colour, background in (("circle", "red", "black"), ("square", "yellow", "gray"),
                                      ("triangle", "cyan", "navy")):
        for size in (8.0, 12.0):
            specs = [ClipSpec(colour, shape, d, background, size, (32.0, 32.0), 1.5)
                     for d in DIRECTIONS]
            z = torch.cat([vae.encode(to_tensor(render(s))[None]) for s in specs])
            d2 += [float(((z[i] - z[j]) ** 2).sum()) for i in range(4) for j in range(i + 1, 4)]
    mean = sum(d2) / len(d2)
    return mean, 1.0 / (1.0 + 2.0 / math.sqrt(mean))


def _swap(caption: str, words: tuple[str, ...]) -> str:
    tokens = caption.split()
    i = next(k for k, t in enumerate(tokens) if t in words)
    tokens[i] = words[(words.index(tokens[i]) + 1) % len(words)]
    return " ".join(tokens)


@torch.no_grad()
def word_use(model: bundle.DefaultModel, clips: int = 48
             ) -> list[tuple[float, float, float, float]]:
    """Per sigma: (sigma, x0-MSE right caption, + with the direction swapped, + colour swapped)."""
    data = [make_clip(seed, "train") for seed in range(clips)]
    x0 = model.vae.encode(torch.stack([to_tensor(c.frames) for c in data]))
    captions = [c.caption for c in data]
    variants = (captions, [_swap(c, tuple(DIRECTIONS)) for c in captions],
                [_swap(c, tuple(COLOURS)) for c in captions])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for s in SIGMAS:
        xt = (1 - s) * x0 + s * noise
        t = torch.full((clips,), s * 1000.0)
        err = []
        for caps in variants:
            v = model.dit(xt, t, model.text.encode(caps))
            err.append(float((((xt - s * v) - x0)[:, :, 1:] ** 2).mean()))
        rows.append((s, err[0], err[1] - err[0], err[2] - err[0]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a folder with diffusion_models/, vae/, text_encoders/ holding the "
                             "default model's file names (a build's export/); default: shipped")
    parser.add_argument("--clips", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load(args.model)
    d2, sigma = direction_snr(model.vae)
    print(f"VAE: mean ||dz||^2 between two directions of one clip {d2:.0f}; "
          f"the direction shows in x_sigma (d' = 2) up to sigma {sigma:.4f}")
    print("sigma | x0-MSE frames 1-4, right caption | + direction swapped | + colour swapped")
    for s, right, d_dir, d_col in word_use(model, args.clips):
        print(f"{s:5.3f} | {right:.4f} | {d_dir:+.4f} | {d_col:+.4f}")


if __name__ == "__main__":
    main()
