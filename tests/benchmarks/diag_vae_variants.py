"""Which VAE change buys the default model's shape IoU: train VAE variants for the same steps, score
their round trips with the issue 11 scorer.

    python tests/benchmarks/diag_vae_variants.py --name base --steps 3000
    python tests/benchmarks/diag_vae_variants.py --name z32 --steps 3000 --vae '{"z_dim": 32}'
    python tests/benchmarks/diag_vae_variants.py --name t2 --steps 3000 \
        --vae '{"temporal_downsample": [false, true]}'

Each variant is the build's VAE configuration (`core.default_model.build.BuildConfig().vae`) with
the `--vae` fields replaced, trained from scratch by the build's own `vae` stage recipe
(`train_vae.train`: batch, crop, learning rate and seed of the build, the learning rate decaying
over `--steps`), then its round trip of the 84 held-out clips (42 held-out prompts x seeds 0, 1)
is scored: mean IoU with the ideal shape (and per shape), shape read right, area steady, T2V-style
frame 0, video PSNR. The run folder (`--work`/`<name>`, inside the ignored `runs/`) keeps a
resumable checkpoint, so a stopped run continues. One thread (the build's setting on a 2-core
machine: run two variants side by side). Prints numbers only (a diagnostic, not a test).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.default_model.build import BuildConfig  # noqa: E402
from core.default_model.evaluate import heldout_cases, score  # noqa: E402
from core.default_model.train_vae import VAETrainConfig, train  # noqa: E402
from core.scorer import psnr, score_clip  # noqa: E402
from core.vae.model import WanVAEModel  # noqa: E402


@torch.no_grad()
def round_trip_scores(model: WanVAEModel, seeds: int = 2, batch: int = 12) -> dict[str, float]:
    """Issue 11 scores of decode(encode(clip)) of the held-out clips, with per-shape IoU."""
    cases = heldout_cases(seeds)
    clips = [c.clip() for c in cases]
    out: list[np.ndarray] = []
    for start in range(0, len(clips), batch):
        x = torch.from_numpy(np.stack(clips[start:start + batch])).float() / 127.5 - 1.0
        y = model.decode_stream(model.encode_stream(x.permute(0, 4, 1, 2, 3)))
        out += list(((y.permute(0, 2, 3, 4, 1) + 1.0) * 127.5).round().clamp(0, 255).byte()
                    .numpy())
    result = score(cases, out)
    result["video_psnr"] = float(np.mean([psnr(a, b) for a, b in zip(out, clips)]))
    reads = [score_clip(clip) for clip in out]
    for shape in sorted({c.shape for c in cases}):
        result[f"iou_{shape}"] = float(np.mean([r.shape_iou(c.shape) for r, c in zip(reads, cases)
                                                if c.shape == shape]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="run folder name under --work")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--vae", default="{}",
                        help="JSON of VAEConfig fields to replace in the build's VAE")
    parser.add_argument("--train", default="{}",
                        help="JSON of VAETrainConfig fields to replace (e.g. edge_weight)")
    parser.add_argument("--work", default="runs/vae_variants")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    build = BuildConfig()
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.vae).items()}
    config = dataclasses.replace(build.vae, **changes)
    out = Path(args.work) / args.name
    train(out, VAETrainConfig(steps=args.steps, lr=build.vae_lr, batch=build.vae_batch,
                              crop=build.vae_crop, minutes=1e9, seed=build.seed, every_s=600,
                              **json.loads(args.train)),
          resume=True, vae_config=config)
    model = WanVAEModel(config)
    model.load_state_dict(torch.load(out / "last.pt", weights_only=True)["model"])
    model.eval()
    result = round_trip_scores(model)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    print(f"{args.name} ({args.steps} steps): {config}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
