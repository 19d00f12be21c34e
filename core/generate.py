"""The main job: a short video from a prompt (and optionally a first frame) with the default model.

    python -m core generate --prompt "a yellow square moving up on a gray background" --out clip.mp4
    python -m core generate --prompt "..." --image first.png --out clip.mp4        # TI2V

Runs on a plain CPU with the pack's own small model (core/default_model), through the same path
the nodes use: text encoder -> `pipeline.sample_video` (seeded noise, schedule, solver, CFG,
TI2V first-frame injection) -> VAE decode -> video file.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .default_model import bundle
from .flow.schedules import flow_sigmas
from .flow.solvers import SOLVERS
from .pipeline import SampleRequest, sample_video


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str                                # e.g. "a red circle moving right on a black background"
    image: np.ndarray | None = None            # TI2V first frame, uint8 [H, W, 3] (resized to fit)
    steps: int = bundle.DEFAULT_STEPS          # solver steps
    shift: float = bundle.DEFAULT_SHIFT        # schedule shift (1 = none; > 1 more steps at high noise)
    cfg: float = bundle.DEFAULT_CFG            # classifier-free guidance scale (1 = off)
    solver: str = bundle.DEFAULT_SOLVER        # euler | heun | dpmpp_2m | unipc
    seed: int = 0                              # noise seed
    frames: int = bundle.FRAMES                # pixel frames, 4n + 1
    width: int = bundle.WIDTH                  # pixels, a multiple of 16 (VAE x8, patch x2)
    height: int = bundle.HEIGHT
    negative: str = ""                         # negative prompt (the empty caption by default)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the clip, e.g. "
                             "'a red circle moving right on a black background'")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {sorted(SOLVERS)}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"frames must be 4n + 1 (e.g. 17), got {self.frames}")
        for name in ("width", "height"):
            size = getattr(self, name)
            if size < 16 or size % 16:
                raise ValueError(f"{name} must be a multiple of 16 (at least 16), got {size}; "
                                 f"the default model is trained at 64")
        if self.cfg <= 0:
            raise ValueError(f"cfg must be positive (1 = no guidance), got {self.cfg}")


def image_to_tensor(image: np.ndarray, width: int, height: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, 1, height, width] in [-1, 1] (scaled to cover, centre-cropped)."""
    from .video_io import resize_center_crop

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"the first frame must be an RGB image [H, W, 3], got shape {arr.shape}")
    x = torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0)[None]  # [1, H, W, 3]
    x = resize_center_crop(x, width, height)
    return x.permute(3, 0, 1, 2)[None] * 2.0 - 1.0                       # [1, 3, 1, H, W]


@torch.no_grad()
def generate(options: GenerateOptions, model: bundle.DefaultModel | None = None) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] for the options (loads the shipped model unless given)."""
    model = model or bundle.load_default_model("cpu")
    vae, dit, text = model.vae, model.dit, model.text
    f = vae.latent_frames(options.frames)
    s = vae.spatial_stride
    shape = (1, vae.latent_channels, f, options.height // s, options.width // s)
    latent = torch.zeros(shape)
    noise_mask = None
    if options.image is not None:
        first = vae.encode_raw(image_to_tensor(options.image, options.width, options.height))
        latent[:, :, :1] = first                                           # [1, z, 1, h, w]
        noise_mask = torch.ones(1, 1, *shape[2:])
        noise_mask[:, :, 0] = 0.0
    request = SampleRequest(
        latent=latent, sigmas=flow_sigmas(options.steps, options.shift),
        context=text.encode([options.prompt]), negative_context=text.encode([options.negative]),
        seed=options.seed, solver=options.solver, cfg=options.cfg, noise_mask=noise_mask)
    raw = sample_video(dit, request, device=torch.device("cpu"))
    video = vae.decode_raw(raw)                                            # [1, 3, T, H, W]
    return ((video[0].permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().numpy()


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """Register `generate` on the `python -m core` command line."""
    p = sub.add_parser("generate", help="make a video with the pack's default model (CPU, seconds)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--prompt", required=True,
                   help='e.g. "a yellow square moving up on a gray background" (colours: '
                        + ", ".join(bundle.COLOURS) + "; shapes: " + ", ".join(bundle.SHAPES)
                        + "; directions: " + ", ".join(bundle.DIRECTIONS) + "; backgrounds: "
                        + ", ".join(bundle.BACKGROUNDS) + ")")
    p.add_argument("--out", default="clip.mp4", help="output video (.mp4 or .gif)")
    p.add_argument("--image", default=None, help="first frame (png/jpg) for image-to-video (TI2V)")
    p.add_argument("--steps", type=int, default=bundle.DEFAULT_STEPS)
    p.add_argument("--shift", type=float, default=bundle.DEFAULT_SHIFT)
    p.add_argument("--cfg", type=float, default=bundle.DEFAULT_CFG)
    p.add_argument("--solver", default=bundle.DEFAULT_SOLVER, choices=sorted(SOLVERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=bundle.FRAMES, help="4n + 1")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .video_io import read_video, write_video

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    image = None
    if args.image:
        image = read_video(args.image, max_frames=1)[0][0]
    options = GenerateOptions(prompt=args.prompt, image=image, steps=args.steps, shift=args.shift,
                              cfg=args.cfg, solver=args.solver, seed=args.seed, frames=args.frames)
    frames = generate(options)
    path = write_video(frames, args.out)
    print(f"wrote {os.fspath(path)} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}) "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0
