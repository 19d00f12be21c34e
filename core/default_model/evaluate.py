"""Score the default model on held-out prompts with the model-independent scorer.

    python -m core.default_model.evaluate                 # default settings: T2V + TI2V table
    python -m core.default_model.evaluate --sweep --sweep-seeds 2 --sweep-modes T2V,TI2V
                                                          # + every solver at 4, 10, 20 steps

Held-out prompts are every (colour, shape, direction) triple of `synthetic.shapes.HELD_OUT` on
every background (42 prompts), each with `--seeds` noise seeds. A clip is "adherent" when the
scorer reads both the prompted colour and the prompted direction; the shape, its IoU with the
ideal shape, the steadiness of area and colour, the flatness of the background and the T2V first
frame are scored against the bars of issue 11 (the constants below). TI2V uses the first frame of a
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

from ..flow.guidance import guidance_interval
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

    def clip(self) -> np.ndarray:
        """uint8 [T, H, W, 3]: a procedural clip of this prompt (deterministic from the seed)."""
        rng = np.random.default_rng([self.seed, 7])
        return render(random_spec(rng, self.colour, self.shape, self.direction, self.background))

    def first_frame(self) -> np.ndarray:
        """uint8 [H, W, 3]: frame 0 of `clip` (the TI2V input)."""
        return self.clip()[0]


def heldout_cases(seeds: int = 2, split: str = "heldout") -> list[Case]:
    return [Case(c, s, d, b, seed) for seed in range(seeds) for c, s, d, b in combinations(split)]


@torch.no_grad()
def generate_batch(model: bundle.DefaultModel, cases: list[Case], *, steps: int, solver: str,
                   shift: float = bundle.DEFAULT_SHIFT, cfg: float = bundle.DEFAULT_CFG,
                   cfg_until: float = bundle.DEFAULT_CFG_UNTIL, ti2v: bool = False,
                   batch: int = 32) -> list[np.ndarray]:
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
        latent = sample(dit, noise, sigmas, positive=context, negative=negative,
                        cfg=guidance_interval(cfg, cfg_until),
                        solver=solver, first_frame=first)
        video = vae.decode(latent)                                               # [b, 3, T, H, W]
        frames = ((video.permute(0, 2, 3, 4, 1) + 1.0) * 127.5).round().clamp(0, 255).byte()
        out += list(frames.numpy())
    return out


# The bars of issue 11 (thresholds applied per clip, then counted over the held-out cases).
AREA_CHANGE_MAX = 0.15      # (max - min) / median of the object's area over the clip
BACKGROUND_STD_MAX = 6.0    # std of the background region, 0..255
FIRST_FRAME_IOU_MIN = 0.8   # T2V frame 0: the right shape with at least this IoU
TI2V_PSNR_MIN = 32.0        # TI2V first frame vs the given image, every image


def score(cases: list[Case], clips: list[np.ndarray], ti2v: bool = False) -> dict[str, float]:
    """Fractions of cases meeting each criterion (and means), plus, for TI2V, first-frame PSNRs."""
    reads = [score_clip(clip) for clip in clips]
    n = len(cases)

    def frac(values) -> float:
        return float(sum(bool(v) for v in values)) / n

    pairs = list(zip(reads, cases))
    result = {
        "n": n,
        "adherence": frac(r.colour == c.colour and r.direction == c.direction for r, c in pairs),
        "colour": frac(r.colour == c.colour for r, c in pairs),
        "direction": frac(r.direction == c.direction for r, c in pairs),
        "background": frac(r.background == c.background for r, c in pairs),
        "shape": frac(r.shape == c.shape for r, c in pairs),
        "shape_iou": float(np.mean([r.shape_iou(c.shape) for r, c in pairs])),
        "area_steady": frac(r.area_change <= AREA_CHANGE_MAX for r, c in pairs),
        "colour_steady": frac(r.colour_steady(c.colour) for r, c in pairs),
        "flat": frac(r.background_std <= BACKGROUND_STD_MAX for r, c in pairs),
        "first_frame": frac(bool(r.frames) and r.frames[0].shape == c.shape
                            and r.frames[0].iou[c.shape] >= FIRST_FRAME_IOU_MIN for r, c in pairs),
    }
    if ti2v:
        values = [psnr(clip[0], c.first_frame()) for clip, c in zip(clips, cases)]
        result["first_frame_psnr_mean"] = float(np.mean(values))
        result["first_frame_psnr_min"] = float(np.min(values))
        result["first_frame_psnr_ok"] = float(np.mean([v >= TI2V_PSNR_MIN for v in values]))
    return result


TABLE_HEADER = ("| mode | settings | n | colour+direction | background | shape | shape IoU | "
                "area steady | colour steady | flat background | frame 0 shape | "
                "TI2V frame-0 PSNR (min; share >= 32 dB) |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(mode: str, settings: str, r: dict[str, float]) -> str:
    """One markdown row of TABLE_HEADER."""
    ff = (f"{r['first_frame_psnr_mean']:.1f} dB ({r['first_frame_psnr_min']:.1f}; "
          f"{r['first_frame_psnr_ok']:.0%})" if "first_frame_psnr_mean" in r else "-")
    return (f"| {mode} | {settings} | {r['n']} | {r['adherence']:.1%} | {r['background']:.1%} | "
            f"{r['shape']:.1%} | {r['shape_iou']:.3f} | {r['area_steady']:.1%} | "
            f"{r['colour_steady']:.1%} | {r['flat']:.1%} | {r['first_frame']:.1%} | {ff} |")


def settings_label(solver: str, steps: int, cfg: float = bundle.DEFAULT_CFG,
                   cfg_until: float = bundle.DEFAULT_CFG_UNTIL) -> str:
    until = f" above sigma {cfg_until}" if cfg_until > 0 else ""
    return f"{solver}, {steps} steps, shift {bundle.DEFAULT_SHIFT}, cfg {cfg}{until}"


def evaluate(model: bundle.DefaultModel, settings: list[tuple[str, str, int]], seeds: int = 2,
             split: str = "heldout", log=print, limit: int | None = None,
             cfg: float = bundle.DEFAULT_CFG,
             cfg_until: float = bundle.DEFAULT_CFG_UNTIL) -> list[dict]:
    """Generate and score every (mode 'T2V'|'TI2V', solver, steps) on the held-out cases (the
    first `limit` of them if given); returns one dict per setting (with 'mode', 'solver',
    'steps', 'seconds' and the scores)."""
    cases = heldout_cases(seeds, split)[:limit]
    rows = []
    for mode, solver, steps in settings:
        t0 = time.time()
        clips = generate_batch(model, cases, steps=steps, solver=solver, ti2v=mode == "TI2V",
                               cfg=cfg, cfg_until=cfg_until)
        r = {"mode": mode, "solver": solver, "steps": steps, **score(cases, clips, mode == "TI2V"),
             "seconds": time.time() - t0}
        rows.append(r)
        log(table_row(mode, settings_label(solver, steps, cfg, cfg_until), r))
    return rows


@torch.no_grad()
def vae_round_trip(vae, cases: list[Case], batch: int = 16) -> dict[str, float]:
    """Scores of `decode(encode(clip))` of the cases' rendered clips (what the decoder can draw
    at best), with the mean video PSNR; `vae` is a loaded `core.vae.vae.WanVAE`."""
    clips = [c.clip() for c in cases]
    out: list[np.ndarray] = []
    for start in range(0, len(clips), batch):
        x = torch.from_numpy(np.stack(clips[start:start + batch])).float() / 127.5 - 1.0
        y = vae.decode(vae.encode(x.permute(0, 4, 1, 2, 3)))                 # [b, 3, T, H, W]
        out += list(((y.permute(0, 2, 3, 4, 1) + 1.0) * 127.5).round().clamp(0, 255).byte()
                    .numpy())
    result = score(cases, out)
    result["video_psnr"] = float(np.mean([psnr(a, b) for a, b in zip(out, clips)]))
    return result


def _write_cases(path: str, cases: list[Case], clips: list[np.ndarray]) -> None:
    import json
    from dataclasses import asdict

    with open(path, "w") as f:
        for case, clip in zip(cases, clips):
            read = score_clip(clip)
            f.write(json.dumps({**asdict(case), "read_colour": read.colour,
                                "read_direction": read.direction,
                                "read_background": read.background,
                                "read_shape": read.shape,
                                "shape_iou": read.shape_iou(case.shape),
                                "area_change": read.area_change,
                                "background_std": read.background_std}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--only-sweep", action="store_true", help="skip the default-settings table")
    parser.add_argument("--sweep-seeds", type=int, default=1)
    parser.add_argument("--sweep-steps", default="4,10,20")
    parser.add_argument("--sweep-modes", default="T2V", help="T2V, TI2V or T2V,TI2V")
    parser.add_argument("--cfg", type=float, default=bundle.DEFAULT_CFG)
    parser.add_argument("--cfg-until", type=float, default=bundle.DEFAULT_CFG_UNTIL,
                        help="guidance only above this sigma (0: every step)")
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
        print(TABLE_HEADER)
    for ti2v in (() if args.only_sweep else (False, True)):
        t0 = time.time()
        clips = generate_batch(model, cases, ti2v=ti2v, cfg=args.cfg, cfg_until=args.cfg_until,
                               **defaults)
        r = score(cases, clips, ti2v)
        if args.cases_out and not ti2v:
            _write_cases(args.cases_out, cases, clips)
        print(table_row("TI2V" if ti2v else "T2V",
                        settings_label(defaults["solver"], defaults["steps"], args.cfg,
                                       args.cfg_until), r),
              flush=True)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)
    if args.sweep or args.only_sweep:
        steps_list = [int(s) for s in args.sweep_steps.split(",")]
        modes = [m.strip().upper() for m in args.sweep_modes.split(",")]
        print(f"\nSweep: {len(heldout_cases(args.sweep_seeds, args.split))} cases per row\n")
        print(TABLE_HEADER, flush=True)
        evaluate(model, [(mode, solver, steps) for mode in modes
                         for solver in ("euler", "heun", "dpmpp_2m", "unipc")
                         for steps in steps_list],
                 seeds=args.sweep_seeds, split=args.split, cfg=args.cfg, cfg_until=args.cfg_until,
                 log=lambda row: print(row, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
