"""Export the trained VAE as the shipped .safetensors, with unit-scale latents folded in.

    python -m core.default_model.export_vae --ckpt /tmp/flowdit_train/vae/last.pt \
        --out core/default_model/vae/flowdit_shapes_vae.safetensors

A z_dim-8 VAE uses the identity latent format (mean 0, std 1), so the DiT sees raw latents. To
make those unit-scale without shipping statistics, the per-channel mean m and std s of the raw
latents (measured on training clips) are folded into the two 1x1x1 latent convolutions:

    encoder side, conv1 (2z -> 2z; mean half, then log-variance half):
        mean' = (mean - m) / s      ->  W[:z] /= s,  b[:z] = (b[:z] - m) / s
        logvar' = logvar - 2 log s  ->  b[z:] -= 2 log s
    decoder side, conv2 (z -> z), applied to the latent:
        conv2(s * mean' + m) = (W diag(s)) mean' + (b + W m)

so decode(encode(x)) is unchanged (checked) and encode(x) has per-channel mean ~0, std ~1.

A VAE of another latent width is read with that width's latent format (`latent_format_for`: a
z_dim-16 VAE is treated as Wan2.1 latents by this pack and by ComfyUI). Its raw latents are then
folded onto that format's statistics (M, S) instead: raw' = M + S (raw - m) / s, which is the fold
above with m' = m - s M / S and s' = s / S. The normalised latents the DiT sees,
(raw' - M) / S = (raw - m) / s, are unit-scale either way.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from einops import rearrange

from ..synthetic.shapes import make_clip, to_tensor
from ..vae.config import VAEConfig
from ..vae.latent_format import LatentFormat, format_metadata, latent_format_for
from ..vae.model import WanVAEModel
from .bundle import VAE_PATH
from .train_vae import SHAPES_VAE


@torch.no_grad()
def latent_stats(model: WanVAEModel, clips: int = 32, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std [z] of raw latents over `clips` training clips."""
    latents = []
    for first in range(0, clips, batch):
        x = torch.stack([to_tensor(make_clip(10_000 + i, "train").frames)
                         for i in range(first, min(first + batch, clips))])
        latents.append(model.encode_stream(x))                          # [b, z, F, h, w]
    flat = rearrange(torch.cat(latents), "b z f h w -> z (b f h w)")
    return flat.mean(dim=1), flat.std(dim=1)


@torch.no_grad()
def fold(model: WanVAEModel, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold `(raw - mean) / std` into conv1 (encoder side) and its inverse into conv2, in place."""
    z = model.config.z_dim
    if mean.shape != (z,) or std.shape != (z,) or not bool((std > 0).all()):
        raise ValueError(f"need per-channel mean and positive std of shape [{z}]")
    w1, b1 = model.conv1.weight, model.conv1.bias                       # [2z, 2z, 1, 1, 1], [2z]
    w1[:z] /= std.view(z, 1, 1, 1, 1)
    b1[:z] = (b1[:z] - mean) / std
    b1[z:] -= 2 * std.log()
    w2, b2 = model.conv2.weight, model.conv2.bias                       # [z, z, 1, 1, 1], [z]
    b2 += w2[:, :, 0, 0, 0] @ mean
    w2 *= std.view(1, z, 1, 1, 1)


@torch.no_grad()
def fold_to_format(model: WanVAEModel, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold so that the raw latents follow the statistics of the latent format the loaders pick
    for this latent width; `mean`, `std`: measured per-channel statistics of the raw latents."""
    target = latent_format_for(model.config.z_dim)
    m_target = torch.tensor(target.mean, dtype=mean.dtype)
    s_target = torch.tensor(target.std, dtype=std.dtype)
    fold(model, mean - std * m_target / s_target, std / s_target)


@torch.no_grad()
def preview_format(model: WanVAEModel, frames: int = 48) -> LatentFormat:
    """The latent format of this (folded) VAE, with live-preview factors: the statistics of the
    format the loaders pick for its width, and a least-squares linear map from each raw latent
    cell (single-frame encode) to the mean RGB of its pixel block, fitted on `frames` procedural
    frames (first frames of training clips 0..frames-1)."""
    base = latent_format_for(model.config.z_dim)
    x = torch.stack([to_tensor(make_clip(seed, "train", frames=1).frames) for seed in range(frames)])
    raw = model.encode_stream(x)                                         # [n, z, 1, h, w]
    n, z, _, h, w = raw.shape
    blocks = x.reshape(n, 3, 1, h, x.shape[-2] // h, w, x.shape[-1] // w).mean(dim=(4, 6))
    design = torch.cat([rearrange(raw, "n z f h w -> (n f h w) z"),
                        torch.ones(n * h * w, 1)], dim=1).double()
    target = rearrange(blocks, "n c f h w -> (n f h w) c").double()
    solution = torch.linalg.lstsq(design, target).solution               # [z + 1, 3]
    return LatentFormat(name=f"flowdit-shapes-{z}", mean=base.mean, std=base.std,
                        rgb_factors=tuple(tuple(row) for row in solution[:z].tolist()),
                        rgb_bias=tuple(solution[z].tolist()))


def export(ckpt: Path, out: Path, check_clips: int = 4, do_fold: bool = True,
           vae_config: VAEConfig = SHAPES_VAE, stat_clips: int = 32) -> dict[str, float]:
    """Load a training checkpoint (or official-key .safetensors), fold, check, save. Returns
    numbers for the model card."""
    from ..train.checkpointing import save_tensors
    from ..vae.loader import load_vae
    from .train_vae import psnr

    model = WanVAEModel(vae_config)
    if ckpt.suffix == ".safetensors":
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(ckpt)))
        step = -1
    else:
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state.get("ema", state["model"]))   # tune_decoder keeps an EMA
        step = int(state["step"])
    model.eval()
    x = torch.stack([to_tensor(make_clip(2000 + i, "heldout").frames) for i in range(check_clips)])
    with torch.no_grad():
        before = model.decode_stream(model.encode_stream(x))
    if do_fold:
        mean, std = latent_stats(model, stat_clips)
        fold_to_format(model, mean, std)
    with torch.no_grad():
        z = model.encode_stream(x)
        after = model.decode_stream(z)
    drift = float((after - before).abs().max())
    if drift > 1e-3:
        raise AssertionError(f"folding changed decode(encode(x)) by {drift}")
    fmt = preview_format(model)     # named in the file, so previews use this VAE's own factors
    save_tensors(model.state_dict(), out, metadata={"flowdit": "default model VAE (Wan2.1 layout)",
                                                     "step": str(step), **format_metadata(fmt)})
    vae = load_vae(out)                                                  # the generic loader
    with torch.no_grad():
        first = vae.decode(vae.encode(x[:, :, :1]))
        normalised = vae.encode(x)                                        # what the DiT sees
        video = vae.decode(normalised)
    numbers = {"step": step, "fold_max_change": drift,
               "latent_mean": float(normalised.mean()), "latent_std": float(normalised.std()),
               "psnr_video": psnr(video, x), "psnr_first_frame": psnr(first, x[:, :, :1])}
    print(numbers, flush=True)
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="/tmp/flowdit_train/vae/last.pt")
    parser.add_argument("--out", default=str(VAE_PATH))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-fold", action="store_true",
                        help="the weights are already folded (a --decoder-only run): keep conv1")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    export(Path(args.ckpt), Path(args.out), do_fold=not args.no_fold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
