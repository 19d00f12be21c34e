"""Score the default model on held-out prompts with the model-independent scorer.

    python -m core.default_model.evaluate                 # default settings: T2V + TI2V table
    python -m core.default_model.evaluate --sweep         # + steps vs adherence for each solver

Held-out prompts are every (colour, shape, direction) triple of `synthetic.shapes.HELD_OUT` on
every background (42 prompts), each with `--seeds` noise seeds. A clip is "adherent" when the
scorer reads both the prompted colour and the prompted direction. TI2V uses the first frame of a
procedural clip of the same prompt as the given image and reports the PSNR of the first output
frame against it. Generation is batched, but each sample's noise is `initial_noise` of its own
seed, so every clip equals what `python -m core generate --seed <seed>` makes.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..flow.noise import initial_noise
from ..flow.sampler import sample
from ..flow.schedules import flow_sigmas
from ..scorer import psnr, score_clip
from ..synthetic.shapes import caption_for, combinations, random_spec, render
from . import bundle


@dataclass(frozen=True)
class Case:
    colour: str
    shape: str
    direction: str
    background: str
    seed: int

    @property
    def prompt(self) -> str:
        return caption_for(self.colour, self.shape, self.direction, self.background)

    def first_frame(self) -> np.ndarray:
        """uint8 [H, W, 3]: frame 0 of a procedural clip of this prompt (TI2V input)."""
        rng = np.random.default_rng([self.seed, 7])
        spec = random_spec(rng, self.colour, self.shape, self.direction, self.background)
        return render(spec)[0]


def heldout_cases(seeds: int = 2, split: str = "heldout") -> list[Case]:
    return [Case(c, s, d, b, seed) for seed in range(seeds) for c, s, d, b in combinations(split)]


@torch.no_grad()
def generate_batch(model: bundle.DefaultModel, cases: list[Case], *, steps: int, solver: str,
                   shift: float = bundle.DEFAULT_SHIFT, cfg: float = bundle.DEFAULT_CFG,
                   ti2v: bool = False, batch: int = 32) -> list[np.ndarray]:
    """Frames uint8 [T, H, W, 3] per case."""
    vae, dit, text = model.vae, model.dit, model.text
    f, s = vae.latent_frames(bundle.FRAMES), vae.spatial_stride
    shape = (1, vae.latent_channels, f, bundle.HEIGHT // s, bundle.WIDTH // s)
    sigmas = flow_sigmas(steps, shift)
    out: list[np.ndarray] = []
    for start in range(0, len(cases), batch):
        group = cases[start:start + batch]
        noise = torch.cat([initial_noise(shape, c.seed) for c in group])       # [b, z, F, h, w]
        context = text.encode([c.prompt for c in group])
        negative = text.encode([""])
        first = None
        if ti2v:
            images = torch.stack([torch.from_numpy(c.first_frame()) for c in group]).float()
            x = (images / 127.5 - 1.0).permute(0, 3, 1, 2)[:, :, None]          # [b, 3, 1, H, W]
            first = vae.encode(x)                                                # [b, z, 1, h, w]
        latent = sample(dit, noise, sigmas, positive=context, negative=negative, cfg=cfg,
                        solver=solver, first_frame=first)
        video = vae.decode(latent)                                               # [b, 3, T, H, W]
        frames = ((video.permute(0, 2, 3, 4, 1) + 1.0) * 127.5).round().clamp(0, 255).byte()
        out += list(frames.numpy())
    return out


def score(cases: list[Case], clips: list[np.ndarray], ti2v: bool = False) -> dict[str, float]:
    """Adherence numbers (fractions) and, for TI2V, the mean first-frame PSNR."""
    reads = [score_clip(clip) for clip in clips]
    n = len(cases)
    result = {
        "n": n,
        "adherence": sum(r.colour == c.colour and r.direction == c.direction
                         for r, c in zip(reads, cases)) / n,
        "colour": sum(r.colour == c.colour for r, c in zip(reads, cases)) / n,
        "direction": sum(r.direction == c.direction for r, c in zip(reads, cases)) / n,
        "background": sum(r.background == c.background for r, c in zip(reads, cases)) / n,
    }
    if ti2v:
        values = [psnr(clip[0], c.first_frame()) for clip, c in zip(clips, cases)]
        result["first_frame_psnr_mean"] = float(np.mean(values))
        result["first_frame_psnr_min"] = float(np.min(values))
    return result


def _write_cases(path: str, cases: list[Case], clips: list[np.ndarray]) -> None:
    import json
    from dataclasses import asdict

    with open(path, "w") as f:
        for case, clip in zip(cases, clips):
            read = score_clip(clip)
            f.write(json.dumps({**asdict(case), "read_colour": read.colour,
                                "read_direction": read.direction,
                                "read_background": read.background}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--only-sweep", action="store_true", help="skip the default-settings table")
    parser.add_argument("--sweep-seeds", type=int, default=1)
    parser.add_argument("--sweep-steps", default="4,10,20")
    parser.add_argument("--cfg", type=float, default=bundle.DEFAULT_CFG)
    parser.add_argument("--split", default="heldout", choices=("heldout", "train"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases-out", default=None,
                        help="write each T2V case and what the scorer read (JSON lines) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = bundle.load_default_model()
    cases = heldout_cases(args.seeds, args.split)
    defaults = dict(steps=bundle.DEFAULT_STEPS, solver=bundle.DEFAULT_SOLVER)
    if not args.only_sweep:
        print("| mode | settings | n | colour+direction | colour | direction | background | "
              "first-frame PSNR |")
        print("|---|---|---|---|---|---|---|---|")
    for ti2v in (() if args.only_sweep else (False, True)):
        t0 = time.time()
        clips = generate_batch(model, cases, ti2v=ti2v, cfg=args.cfg, **defaults)
        r = score(cases, clips, ti2v)
        if args.cases_out and not ti2v:
            _write_cases(args.cases_out, cases, clips)
        ff = (f"{r['first_frame_psnr_mean']:.1f} dB (min {r['first_frame_psnr_min']:.1f})"
              if ti2v else "-")
        print(f"| {'TI2V' if ti2v else 'T2V'} | {defaults['solver']}, {defaults['steps']} steps, "
              f"shift {bundle.DEFAULT_SHIFT}, cfg {args.cfg} | {r['n']} | "
              f"{r['adherence']:.1%} | {r['colour']:.1%} | {r['direction']:.1%} | "
              f"{r['background']:.1%} | {ff} |", flush=True)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)
    if args.sweep or args.only_sweep:
        sweep_cases = heldout_cases(args.sweep_seeds, args.split)
        steps_list = [int(s) for s in args.sweep_steps.split(",")]
        print(f"\nT2V colour+direction adherence, {len(sweep_cases)} held-out prompts x seeds:\n")
        print("| solver | " + " | ".join(f"{s} steps" for s in steps_list) + " |")
        print("|---|" + "---|" * len(steps_list))
        for solver in ("euler", "heun", "dpmpp_2m", "unipc"):
            cells = []
            for steps in steps_list:
                clips = generate_batch(model, sweep_cases, steps=steps, solver=solver, cfg=args.cfg)
                cells.append(f"{score(sweep_cases, clips)['adherence']:.0%}")
            print(f"| {solver} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
