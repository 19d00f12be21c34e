"""The step cache's speed/quality curve on the pack's default model, per solver.

    python tests/benchmarks/bench_step_cache.py [--steps 20,50] [--solvers euler,heun,dpmpp_2m,unipc]
        [--thresholds 0.2,0.4,0.6] [--seeds 1] [--start 0.1] [--end 0.9] [--reuse velocity]
        [--max-skips 0] [--ti2v] [--threads 1]

For every held-out prompt (`core.default_model.evaluate.heldout_cases`: 42 prompts x seeds), each
clip is sampled alone (batch 1, as `python -m core generate` does: the cache decides per batch),
once without the cache and once per threshold, with the same seed. Per (solver, steps, threshold)
it prints:

- forwards: DiT forward calls summed over the clips (batched CFG: one forward per computed call),
  and the ratio uncached / cached ("2.0x" = half the forwards);
- PSNR of each decoded clip against the uncached clip of the same seed (uint8 pixels, whole
  clip), mean and minimum over the clips;
- held-out adherence (colour and direction both read by the model-independent scorer), in %,
  and its change against uncached, in points;
- wall time of the sampling loop summed over the clips (not the VAE decode), and its ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="20,50")
    parser.add_argument("--solvers", default="euler,heun,dpmpp_2m,unipc")
    parser.add_argument("--thresholds", default="0.2,0.4,0.6")
    parser.add_argument("--seeds", type=int, default=1, help="noise seeds per held-out prompt")
    parser.add_argument("--start", type=float, default=None, help="StepCacheConfig.start")
    parser.add_argument("--end", type=float, default=None, help="StepCacheConfig.end")
    parser.add_argument("--reuse", default=None, help="StepCacheConfig.reuse: delta | velocity")
    parser.add_argument("--max-skips", type=int, default=None, help="StepCacheConfig.max_skips")
    parser.add_argument("--ti2v", action="store_true", help="give each clip its first frame")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N cases (quick looks)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from core.default_model import bundle
    from core.default_model.evaluate import heldout_cases, score
    from core.flow.noise import initial_noise
    from core.flow.sampler import sample
    from core.flow.schedules import flow_sigmas
    from core.flow.step_cache import StepCacheConfig
    from core.scorer import psnr

    if not bundle.is_shipped():
        print(f"skipped: {bundle.missing_message()}")
        return 0
    torch.set_num_threads(args.threads)
    model = bundle.load_default_model()
    vae, dit, text = model.vae, model.dit, model.text
    cases = heldout_cases(args.seeds)
    if args.limit:
        cases = cases[:args.limit]
    f, s = vae.latent_frames(bundle.FRAMES), vae.spatial_stride
    shape = (1, vae.latent_channels, f, bundle.HEIGHT // s, bundle.WIDTH // s)
    with torch.no_grad():
        contexts = [text.encode([c.prompt]) for c in cases]
        negative = text.encode([""])
        firsts = [None] * len(cases)
        if args.ti2v:
            for i, c in enumerate(cases):
                image = torch.from_numpy(c.first_frame()).float()
                firsts[i] = vae.encode((image / 127.5 - 1.0).permute(2, 0, 1)[None, :, None])
    overrides = {k: v for k, v in (("start", args.start), ("end", args.end), ("reuse", args.reuse),
                                   ("max_skips", args.max_skips)) if v is not None}
    forwards = [0]

    def counted(x, t, context, clip_fea=None):
        forwards[0] += 1
        return dit(x, t, context, clip_fea=clip_fea)

    counted.config = dit.config

    @torch.no_grad()
    def run(solver: str, steps: int, config):
        forwards[0] = 0
        sigmas = flow_sigmas(steps, bundle.DEFAULT_SHIFT)
        latents, wall = [], 0.0
        for case, ctx, first in zip(cases, contexts, firsts):
            noise = initial_noise(shape, case.seed)
            t0 = time.perf_counter()
            latents.append(sample(counted, noise, sigmas, positive=ctx, negative=negative,
                                  cfg=bundle.DEFAULT_CFG, solver=solver, first_frame=first,
                                  step_cache=config))
            wall += time.perf_counter() - t0
        clips = []
        for start in range(0, len(latents), 16):
            video = vae.decode(torch.cat(latents[start:start + 16]))      # [b, 3, T, H, W]
            frames = ((video.permute(0, 2, 3, 4, 1) + 1.0) * 127.5).round().clamp(0, 255).byte()
            clips += list(frames.numpy())
        return clips, forwards[0], wall

    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(f"default model, {len(cases)} held-out clips ({'TI2V' if args.ti2v else 'T2V'}), "
          f"shift {bundle.DEFAULT_SHIFT}, cfg {bundle.DEFAULT_CFG}, batch 1, "
          f"{args.threads} thread(s); cache {StepCacheConfig(**overrides)}")
    print("| solver | steps | threshold | forwards | fewer | PSNR mean | PSNR min | adherence | "
          "change | sampling s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for solver in args.solvers.split(","):
        for steps in (int(n) for n in args.steps.split(",")):
            ref, ref_fwd, ref_wall = run(solver, steps, None)
            ref_adh = score(cases, ref)["adherence"]
            print(f"| {solver} | {steps} | off | {ref_fwd} | 1.00x | - | - | {ref_adh:.1%} | - | "
                  f"{ref_wall:.2f} | 1.00x |", flush=True)
            for threshold in thresholds:
                config = StepCacheConfig(threshold=threshold, **overrides)
                clips, fwd, wall = run(solver, steps, config)
                values = [psnr(a, b) for a, b in zip(clips, ref)]
                finite = [v for v in values if np.isfinite(v)]
                mean = float(np.mean(finite)) if finite else float("inf")
                low = float(np.min(values))
                adh = score(cases, clips)["adherence"]
                print(f"| {solver} | {steps} | {threshold:g} | {fwd} | {ref_fwd / fwd:.2f}x | "
                      f"{mean:.1f} | {low:.1f} | {adh:.1%} | {100 * (adh - ref_adh):+.1f} | "
                      f"{wall:.2f} | {ref_wall / wall:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
