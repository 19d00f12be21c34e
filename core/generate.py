"""The main job: a short video from a prompt (and optionally a first frame) with the default model.

    python -m core generate --prompt "a yellow square moving up on a gray background" --out clip.mp4
    python -m core generate --prompt "..." --image first.png --out clip.mp4        # TI2V

Runs on a plain CPU with the pack's own small model (core/default_model), through the same path
the nodes use: text encoder -> `pipeline.sample_video` (seeded noise, schedule, solver, CFG,
TI2V first-frame injection) -> VAE decode -> video file.

Importing this module does not import torch: the command line checks every argument (sizes,
frames, steps, solver, cfg, threads, the output's format, the image) first, so a mistake is
reported at once rather than after torch and the model have loaded.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from .default_model import settings
from .synthetic.shapes import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES

MAX_STEPS = 1000           # far past the plateau (10-20 steps, model card); caps runaway requests
IMAGE_FORMATS = "PNG, JPEG, WebP, BMP or GIF (its first frame)"
OUTPUT_HELP = (".mp4/.mov/.mkv (H.264) or .webm (VP9) video; .gif (frame delays in 10 ms units, "
               "rounded so the total length stays exact); .png (animated PNG) or .webp (animated "
               "WebP); a folder ending in '/' or a pattern such as frames/%%03d.png: one PNG per "
               "frame")   # (%% : argparse formats help strings)
# Measured (README, "Threads"): the main job in-process, 1 vs 2 threads interleaved, on a shared
# 2-core CPU: 1 thread was faster (this model's operations are too small to split well).
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str                                 # "a red circle moving right on a black background"
    image: np.ndarray | None = None             # TI2V first frame, uint8 [H, W, 3] (resized to fit)
    steps: int = settings.DEFAULT_STEPS         # solver steps
    shift: float = settings.DEFAULT_SHIFT       # schedule shift (1 = none; > 1: more high-noise steps)
    cfg: float = settings.DEFAULT_CFG           # classifier-free guidance scale (1 = off)
    cfg_until: float = settings.DEFAULT_CFG_UNTIL  # guidance only at sigma > this (0 = every step)
    solver: str = settings.DEFAULT_SOLVER       # euler | heun | dpmpp_2m | unipc
    seed: int = 0                               # noise seed
    frames: int = settings.FRAMES               # pixel frames, 4n + 1
    width: int = settings.WIDTH                 # pixels, a multiple of 16 (default model: 8 would
                                                # do, VAE x4 x patch x2; the Wan2.1 VAE needs 16)
    height: int = settings.HEIGHT
    negative: str = ""                          # negative prompt (the empty caption by default)
    cache: float = 0.0                          # step-cache threshold (0 = off; e.g. 0.4 halves the DiT calls)
    compile: bool = False                       # torch.compile the DiT's blocks

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the clip, e.g. "
                             "'a red circle moving right on a black background'")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if self.solver not in settings.SOLVER_NAMES:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of "
                             f"{list(settings.SOLVER_NAMES)}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"frames must be 4n + 1 (e.g. 17), got {self.frames}")
        for name in ("width", "height"):
            size = getattr(self, name)
            if size < 16 or size % 16:
                raise ValueError(f"{name} must be a multiple of 16 (at least 16), got {size}; "
                                 f"the default model is trained at 64")
        # `not x > 0` also refuses NaN, which every comparison lets through.
        if not (math.isfinite(self.cfg) and self.cfg > 0):
            raise ValueError(f"cfg must be a finite number > 0 (1 = no guidance), got {self.cfg}")
        if not (math.isfinite(self.cfg_until) and 0 <= self.cfg_until < 1):
            raise ValueError(f"cfg_until must be in [0, 1) (0 = guidance on every step), got "
                             f"{self.cfg_until}")
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be a finite number > 0 (1 = no shift), got {self.shift}")
        if not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        if not (math.isfinite(self.cache) and self.cache >= 0):
            raise ValueError(f"cache must be a finite threshold >= 0 (0 = off, e.g. 0.4), got "
                             f"{self.cache}")


def image_to_tensor(image: np.ndarray, width: int, height: int):
    """uint8 [H, W, 3] -> torch [1, 3, 1, height, width] in [-1, 1] (scaled to cover, then
    centre-cropped)."""
    import torch

    from .video_io import resize_center_crop

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"the first frame must be an RGB image [H, W, 3], got shape {arr.shape}")
    x = torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0)[None]  # [1, H, W, 3]
    x = resize_center_crop(x, width, height)
    return x.permute(3, 0, 1, 2)[None] * 2.0 - 1.0                       # [1, 3, 1, H, W]


def generate(options: GenerateOptions, model=None, *, parallel=None,
             shard_weights: bool = False) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] for the options (loads the shipped model unless given; a
    `bundle.DefaultModel`).

    parallel: a `core.parallel.ParallelMesh` (under torchrun): the DiT's forward is split over
    its ranks (Ulysses sequence parallelism, CFG parallelism); every rank returns the same frames.
    shard_weights: with `parallel`, shard the DiT's weights over the ranks with FSDP2.
    """
    import torch

    from .default_model import bundle
    from .flow.schedules import flow_sigmas
    from .flow.step_cache import StepCacheConfig
    from .memory import ModelSizes, check_request_fits
    from .pipeline import SampleRequest, sample_video

    model = model or bundle.load_default_model("cpu")
    vae, dit, text = model.vae, model.dit, model.text
    # Refuse what cannot fit before allocating it (the estimate and the largest size that fits).
    check_request_fits(options.width, options.height, options.frames, cfg=options.cfg != 1.0,
                       model=ModelSizes.from_models(dit.config, vae, compute_dtype=torch.float32,
                                                    base=ModelSizes()))
    if options.compile:
        from .dit.compile import compile_blocks

        compile_blocks(dit)
    if parallel is not None:
        from .parallel import ParallelDiT
        from .parallel import shard_weights as fsdp_shard

        if shard_weights:
            fsdp_shard(dit)
        dit = ParallelDiT(dit, parallel)
    f = vae.latent_frames(options.frames)
    s = vae.spatial_stride
    shape = (1, vae.latent_channels, f, options.height // s, options.width // s)
    with torch.no_grad():
        latent = torch.zeros(shape)
        noise_mask = None
        if options.image is not None:
            first = vae.encode_raw(image_to_tensor(options.image, options.width, options.height))
            latent[:, :, :1] = first                                       # [1, z, 1, h, w]
            noise_mask = torch.ones(1, 1, *shape[2:])
            noise_mask[:, :, 0] = 0.0
        request = SampleRequest(
            latent=latent, sigmas=flow_sigmas(options.steps, options.shift),
            context=text.encode([options.prompt]), negative_context=text.encode([options.negative]),
            seed=options.seed, solver=options.solver, cfg=options.cfg,
            cfg_until=options.cfg_until, noise_mask=noise_mask,
            step_cache=StepCacheConfig(threshold=options.cache) if options.cache > 0 else None)
        raw = sample_video(dit, request, device=torch.device("cpu"))
        video = vae.decode_raw(raw)                                        # [1, 3, T, H, W]
    return ((video[0].permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().numpy()


# ----- the command line -------------------------------------------------------------------------


def read_first_frame(path: str) -> np.ndarray:
    """The `--image` file as uint8 [H, W, 3] (torch-free; one-line ValueError naming the option)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ValueError(f"--image {path}: the file {what}; give a {IMAGE_FORMATS} image")
    try:
        with Image.open(path) as im:
            im.seek(0)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        detail = "" if isinstance(err, UnidentifiedImageError) else f" ({err})"
        raise ValueError(f"--image {path}: not an image that can be read{detail}; give a "
                         f"{IMAGE_FORMATS} image") from None


def describe_fit(h: int, w: int, height: int, width: int) -> str | None:
    """One line saying how an h x w image is scaled and centre-cropped to width x height (as
    `video_io.resize_center_crop` does), or None when it already fits."""
    if (h, w) == (height, width):
        return None
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    crop = "" if (nh, nw) == (height, width) else f" and centre-cropped to {width}x{height}"
    return f"{w}x{h} scaled to {nw}x{nh}{crop} (the model's size)"


def _int(low: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float():
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value
    return parse


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """Register `generate` on the `python -m core` command line (torch-free)."""
    words = ("colours: " + ", ".join(COLOURS) + "\nshapes: " + ", ".join(SHAPES) + "\ndirections: "
             + ", ".join(DIRECTIONS) + "\nbackgrounds: " + ", ".join(BACKGROUNDS))
    p = sub.add_parser(
        "generate", help="make a video with the pack's default model (CPU, seconds)",
        description=__doc__.split("\n\n")[0] + "\n\nThe default model knows one kind of clip:\n"
        "    a <colour> <shape> moving <direction> on a <background> background\n" + words,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True,
                   help='what the clip shows, e.g. "a yellow square moving up on a gray '
                        'background" '
                        "(required; words outside the vocabulary above are ignored, with a note)")
    p.add_argument("--out", default="clip.mp4",
                   help="output (default: %(default)s): " + OUTPUT_HELP)
    p.add_argument("--image", default=None,
                   help="first frame for image-to-video (TI2V): a " + IMAGE_FORMATS + " image, "
                        "scaled and centre-cropped to the clip's size (default: none, text only)")
    p.add_argument("--steps", type=_int(1), default=settings.DEFAULT_STEPS,
                   help="solver steps; more is slower, below %d edges get softer and the object "
                        "less steady (default: %%(default)s)" % settings.MIN_STEADY_STEPS)
    p.add_argument("--shift", type=_positive_float(), default=settings.DEFAULT_SHIFT,
                   help="schedule shift; > 1 spends more steps at high noise, 1 = none "
                        "(default: %(default)s)")
    p.add_argument("--cfg", type=_positive_float(), default=settings.DEFAULT_CFG,
                   help="guidance scale: how strongly to follow the prompt, 1 = off (one model "
                        "call per step instead of two) (default: %(default)s)")
    p.add_argument("--cfg-until", type=float, default=settings.DEFAULT_CFG_UNTIL,
                   help="guide only while the noise level sigma is above this, in [0, 1); below "
                        "it one model call per step; 0 = guide every step (default: %(default)s)")
    p.add_argument("--solver", default=settings.DEFAULT_SOLVER, choices=settings.SOLVER_NAMES,
                   help="ODE solver (default: %(default)s)")
    p.add_argument("--seed", type=_int(0), default=0,
                   help="noise seed; the same seed and options give the same clip "
                        "(default: %(default)s)")
    p.add_argument("--frames", type=_int(1), default=settings.FRAMES,
                   help="clip length in frames, 4n + 1 (e.g. 9, 17, 33) at %g fps; the model is "
                        "trained on %d (default: %%(default)s)" % (settings.FPS, settings.FRAMES))
    p.add_argument("--width", type=_int(16), default=settings.WIDTH,
                   help="pixels, a multiple of 16; the model is trained at %d "
                        "(default: %%(default)s)"
                        % settings.WIDTH)
    p.add_argument("--height", type=_int(16), default=settings.HEIGHT,
                   help="pixels, a multiple of 16 (default: %(default)s)")
    p.add_argument("--threads", type=_int(1), default=DEFAULT_THREADS,
                   help="CPU threads for torch; this small model is fastest on 1, more threads "
                        "only add waiting on a busy machine (default: %(default)s)")
    p.add_argument("--cache", type=_threshold, default=0.0,
                   help="step caching: skip DiT calls whose result is predictable from the last "
                        "computed one while the accumulated change stays under this threshold; "
                        "0 = off, 0.4 halves the calls at ~33 dB against the uncached clip "
                        "(model card) (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT's transformer blocks (seconds to compile; pays off "
                        "on long runs and GPUs) (default: off)")
    p.add_argument("--ulysses", type=_int(1), default=1,
                   help="split each DiT forward's tokens over this many processes (Ulysses "
                        "sequence parallelism; start them with `torchrun --nproc_per_node N -m core "
                        "generate ...`; the model's heads must divide by N) (default: %(default)s)")
    p.add_argument("--cfg-parallel", action="store_true",
                   help="run the conditional and unconditional passes on different processes "
                        "(doubles the processes torchrun must start) (default: off)")
    p.add_argument("--shard-weights", action="store_true",
                   help="with torchrun: shard the DiT's weights over the processes with FSDP2, for "
                        "models that do not fit one device (default: off)")
    p.add_argument("--strict", action="store_true",
                   help="stop with an error on words outside the vocabulary instead of ignoring "
                        "them (default: off)")
    p.set_defaults(func=_cmd_generate)


def _is_first_process() -> bool:
    """False on the other ranks of a torchrun launch, which print nothing."""
    return os.environ.get("RANK", "0") == "0"


_OPTION_FIELDS = ("steps", "shift", "cfg", "cfg_until", "seed", "frames", "width", "height", "cache")


def _cmd_generate(args: argparse.Namespace) -> int:
    from .video_io import check_output_path

    t0 = time.perf_counter()
    # Every check that needs no model comes first (and before torch is imported).
    try:
        options = GenerateOptions(prompt=args.prompt, steps=args.steps, shift=args.shift,
                                  cfg=args.cfg, cfg_until=args.cfg_until, solver=args.solver,
                                  seed=args.seed, frames=args.frames, width=args.width,
                                  height=args.height, cache=args.cache, compile=args.compile)
    except ValueError as err:     # "frames must be ..." -> "--frames must be ..."
        option = str(err).split()[0]
        text = str(err)
        raise ValueError(f"--{option.replace('_', '-')}{text[len(option):]}"
                         if option in _OPTION_FIELDS else text) from None
    try:
        kind = check_output_path(args.out)
    except ValueError as err:
        raise ValueError(f"--out {err}") from None
    image = None
    if args.image:
        image = read_first_frame(args.image)
        fit = describe_fit(image.shape[0], image.shape[1], options.height, options.width)
        if fit and _is_first_process():
            print(f"--image {args.image}: {fit}", file=sys.stderr)
        options = replace(options, image=image)
    if options.steps < settings.MIN_STEADY_STEPS and _is_first_process():
        if options.cfg_until > 0 and options.cfg != 1.0:
            advice = (f"with guidance only above sigma {options.cfg_until} few steps are guided and "
                      f"the shape often comes out wrong; for few steps use --cfg 3 --cfg-until 0")
        else:
            advice = ("the default model still draws the prompted colour, direction and shape, "
                      "but with softer edges and a less steady object")
        print(f"note: --steps {options.steps} is below {settings.MIN_STEADY_STEPS}: {advice} "
              f"(model card: 'Scores of the shipped model')", file=sys.stderr)

    import torch

    from .default_model import bundle
    from .video_io import write_video

    torch.set_num_threads(args.threads)
    mesh = None
    if args.ulysses > 1 or args.cfg_parallel or args.shard_weights or "WORLD_SIZE" in os.environ:
        from .parallel import init_mesh

        mesh = init_mesh(args.ulysses, args.cfg_parallel)
    model = bundle.load_default_model("cpu")
    tokenizer = model.text.tokenizer
    unknown = tokenizer.unknown_words([options.prompt])
    if unknown and args.strict:
        raise ValueError(tokenizer.describe_unknown(unknown) + " (--strict)")
    try:                                        # an unknown word is reported once, as one line
        frames = generate(options, model, parallel=mesh, shard_weights=args.shard_weights)
    except RuntimeError as err:
        from .parallel import RankFailure

        if not isinstance(err, RankFailure):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    if mesh is not None:
        from .parallel import close_mesh

        close_mesh(mesh)                        # all ranks done before any process exits
    if mesh is not None and not mesh.is_writer:
        return 0                                # rank 0 writes the file; the others write nothing
    path = write_video(frames, args.out, fps=settings.FPS)
    what = (f"{frames.shape[0]} PNG frames" if kind in ("folder", "pattern")
            else f"{frames.shape[0]} frames")
    shown = os.fspath(path) + ("/" if kind == "folder" else "")
    print(f"wrote {shown} ({what}, {frames.shape[2]}x{frames.shape[1]}, "
          f"{settings.FPS:g} fps) in {time.perf_counter() - t0:.1f}s")
    return 0
