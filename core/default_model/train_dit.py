"""Train the default model's DiT and text encoder jointly with the pack's training loop.

    # 1. encode the procedural clips once with the trained VAE (cached in --work)
    # 2. train (resumable: checkpoints in --work/run/checkpoints, `--resume` continues)
    # 3. export the EMA weights as the shipped .safetensors files
    python -m core.default_model.train_dit --vae core/default_model/vae/flowdit_shapes_vae.safetensors \
        --work /tmp/flowdit_train/dit --clips 1200 --steps 4500 [--resume] [--export]
    (the exact commands of the shipped run are in MODEL_CARD.md)

One nn.Module (`ShapesModel`) holds the WanDiT and the TextEncoder; the loss encodes the captions
(10% of them replaced by the empty caption, the null condition for classifier-free guidance) and
calls `core.train.flow_matching_loss` with logit-normal sigmas and the first latent frame kept
clean for half of the samples (T2V and TI2V in one model, as Wan2.2 TI2V-5B).
"""
from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..dit.config import DiTConfig, dit_metadata
from ..dit.model import WanDiT
from ..synthetic.shapes import make_clip, to_tensor
from ..text.encoder import TextEncoder, TextEncoderConfig, save_text_encoder
from ..train import TrainConfig, flow_matching_loss, train
from ..train.checkpointing import latest_checkpoint, read_checkpoint, save_tensors
from ..vae.latent_format import LatentFormat, format_metadata
from .bundle import DIT_PATH, SHAPES_DIT, SHAPES_TEXT, TEXT_PATH, VOCABULARY
from .train_vae import _save

CFG_DROPOUT = 0.1        # probability that a caption is replaced by the empty one
FIRST_FRAME_PROB = 0.5   # probability that latent frame 0 stays clean (TI2V training)


class ShapesModel(nn.Module):
    """The trainable pair: `dit` (WanDiT) and `text` (TextEncoder)."""

    def __init__(self, dit_config: DiTConfig = SHAPES_DIT,
                 text_config: TextEncoderConfig = SHAPES_TEXT) -> None:
        super().__init__()
        self.dit = WanDiT(dit_config)
        self.text = TextEncoder(text_config, VOCABULARY)


class LatentCaptions(torch.utils.data.Dataset):
    """Cached latents [N, C, F, h, w] with their caption token ids [N, L]."""

    def __init__(self, latents: torch.Tensor, tokens: torch.Tensor) -> None:
        if latents.shape[0] != tokens.shape[0]:
            raise ValueError(f"{latents.shape[0]} latents but {tokens.shape[0]} captions")
        self.latents, self.tokens = latents, tokens

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"latent": self.latents[i], "tokens": self.tokens[i]}


def shapes_loss(model: ShapesModel, batch: dict[str, torch.Tensor], generator: torch.Generator,
                logit_mean: float = 0.0, logit_std: float = 1.0
                ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Caption dropout, text encoding, then the flow-matching loss on the DiT. The training sigmas
    are sigmoid(N(logit_mean, logit_std²)): logit_mean log(k) shifts the median sigma 1/2 by k."""
    tokens = batch["tokens"]                                              # [B, L]
    drop = torch.rand(tokens.shape[0], generator=generator) < CFG_DROPOUT  # [B]
    null = model.text.tokenizer.encode([""]).to(tokens.device)           # [1, L]
    tokens = torch.where(drop.to(tokens.device)[:, None], null, tokens)
    context = model.text(tokens)                                          # [B, L, D_text]
    return flow_matching_loss(model.dit, batch["latent"], context, generator=generator,
                              sampling="logit_normal", logit_mean=logit_mean,
                              logit_std=logit_std, first_frame_prob=FIRST_FRAME_PROB)


@torch.no_grad()
def cache_latents(vae_path: Path, clips: int, out: Path, batch: int = 16,
                  shard: tuple[int, int] = (0, 1)) -> Path:
    """Encode training clips 0..clips-1 once; saves {'latents', 'captions'} to `out` (resumes).
    shard=(k, n) encodes only the seeds s with s % n == k (run n processes, then `merge_shards`)."""
    from ..vae.loader import load_vae

    vae = load_vae(vae_path)
    done: list[torch.Tensor] = []
    captions: list[str] = []
    partial = out.with_suffix(".partial.pt")
    if partial.exists():
        state = torch.load(partial, weights_only=True)
        done, captions = [state["latents"]], list(state["captions"])
    seeds = [s for s in range(clips) if s % shard[1] == shard[0]]
    start, t0 = len(captions), time.time()
    for first in range(start, len(seeds), batch):
        group = [make_clip(seed, "train") for seed in seeds[first:first + batch]]
        x = torch.stack([to_tensor(c.frames) for c in group])              # [b, 3, T, H, W]
        done.append(vae.encode(x).float())                                 # [b, z, F, h, w]
        captions += [c.caption for c in group]
        _save(partial, {"latents": torch.cat(done), "captions": captions})
        print(f"encoded {len(captions)}/{len(seeds)} clips ({time.time() - t0:.0f}s)", flush=True)
    latents = torch.cat(done)
    _save(out, {"latents": latents, "captions": captions})
    partial.unlink(missing_ok=True)
    print(f"latents {tuple(latents.shape)}: mean {latents.mean():.3f} std {latents.std():.3f}")
    return out


def merge_shards(parts: list[Path], out: Path) -> Path:
    """Concatenate shard caches (any order of seeds is fine for training)."""
    states = [torch.load(p, weights_only=True) for p in parts]
    _save(out, {"latents": torch.cat([s["latents"] for s in states]),
                "captions": [c for s in states for c in s["captions"]]})
    return out


def train_shapes(latents: Path, config: TrainConfig, dit_config: DiTConfig = SHAPES_DIT,
                 text_config: TextEncoderConfig = SHAPES_TEXT, resume: bool = True,
                 logit_mean: float = 0.0, logit_std: float = 1.0, init: Path | None = None):
    """Train ShapesModel on cached latents with the pack's loop (checkpoints in
    config.output_dir/checkpoints; `resume` continues from the newest). `init`: a checkpoint
    folder of an earlier run whose EMA weights (raw ones if it has none) a fresh run starts
    from; a run that has checkpoints of its own resumes from them instead."""
    data = torch.load(latents, weights_only=True)
    torch.manual_seed(config.seed)                   # the initial weights
    model = ShapesModel(dit_config, text_config)
    if init is not None:
        weights, ema, _ = read_checkpoint(init)
        model.load_state_dict({**model.state_dict(), **(ema if ema is not None else weights)})
    tokens = model.text.tokenizer.encode(list(data["captions"]))
    dataset = LatentCaptions(data["latents"], tokens)
    loss = functools.partial(shapes_loss, logit_mean=logit_mean, logit_std=logit_std)
    return train(model, loss, dataset, config, resume=resume)


def export(run_dir: Path, dit_path: Path = DIT_PATH, text_path: Path = TEXT_PATH,
           use_ema: bool = True, dit_config: DiTConfig = SHAPES_DIT,
           text_config: TextEncoderConfig = SHAPES_TEXT,
           latent_format: LatentFormat | None = None) -> None:
    """The newest checkpoint's (EMA) weights -> the shipped DiT and text encoder files. The DiT
    file records its head count in the metadata (`num_heads`): no key stores it; and, when given,
    the latent format of the VAE it was trained with (`latent_format`, for previews)."""
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}")
    weights, ema, state = read_checkpoint(ckpt)
    chosen = ema if (use_ema and ema is not None) else weights
    model = ShapesModel(dit_config, text_config)
    model.load_state_dict({**model.state_dict(), **chosen})
    dit_sd = {k: v for k, v in model.dit.state_dict().items()}
    dit_path.parent.mkdir(parents=True, exist_ok=True)
    text_path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if latent_format is None else format_metadata(latent_format)
    save_tensors(dit_sd, dit_path, metadata={"flowdit": "default model DiT",
                                             "step": str(state["step"]), **dit_metadata(dit_config),
                                             **extra})
    save_text_encoder(model.text, text_path)
    print(f"exported step {state['step']} ({'EMA' if chosen is ema else 'raw'}) to {dit_path} "
          f"and {text_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="core/default_model/vae/flowdit_shapes_vae.safetensors")
    parser.add_argument("--work", default="/tmp/flowdit_train/dit")
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", action="store_true", help="only export the newest checkpoint")
    parser.add_argument("--shards", type=int, default=1,
                        help="encode in this many processes: run with --shard k for k < shards "
                             "first, then without --shard to merge and train")
    parser.add_argument("--shard", type=int, default=None)
    args = parser.parse_args(argv)
    # One thread: on a shared 2-core machine, OpenMP's second thread mostly waits (6x slower).
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    run_dir = work / "run"
    if args.export:
        export(run_dir)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    cache = work / f"latents_{args.clips}.pt"
    if args.shard is not None:
        cache_latents(Path(args.vae), args.clips, work / f"shard{args.shard}of{args.shards}.pt",
                      shard=(args.shard, args.shards))
        return 0
    parts = [work / f"shard{k}of{args.shards}.pt" for k in range(args.shards)]
    if not cache.exists() and args.shards > 1:
        merge_shards(parts, cache)
    elif not cache.exists():
        cache_latents(Path(args.vae), args.clips, cache)
    config = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=50,
                         weight_decay=0.01, grad_clip=1.0, ema_decay=0.995,
                         checkpoint_every=args.checkpoint_every, log_every=10, seed=0,
                         mixed_precision="no", device="cpu", output_dir=str(run_dir),
                         progress=False)
    result = train_shapes(cache, config, resume=args.resume)
    print(f"done: step {result.step}, loss {result.loss:.4f}, {result.seconds:.0f}s", flush=True)
    export(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
