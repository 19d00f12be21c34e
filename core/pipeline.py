"""From ComfyUI-convention inputs (raw VAE latents, per-frame masks) to a sampled raw latent.

The nodes and the command line both call `sample_video`: it normalises the latent with the
model's latent format, draws the seeded noise, translates TI2V/I2V conditioning into the forms
`flow.sampler.sample` takes, samples, and returns the raw latent again. With a list of `Expert`s
instead of one DiT (Wan2.2 A14B: a high-noise and a low-noise expert) it samples in stages over
one schedule (`flow.sampler.sample_stages`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from .flow.guidance import guidance_interval
from .flow.noise import initial_noise
from .flow.sampler import sample_stages
from .flow.stages import Stage
from .memory import MAX_STEPS, ModelSizes, check_sampling_fits
from .flow.step_cache import StepCacheConfig
from .vae.latent_format import LatentFormat, latent_format_for


@dataclass(frozen=True)
class SampleRequest:
    """One sampling job, in ComfyUI's conventions (raw latents between nodes)."""
    latent: torch.Tensor                      # [B, C, F, H, W] raw: zeros (t2v), an encoded video (v2v), or a TI2V latent
    sigmas: torch.Tensor                      # [N + 1], decreasing to 0; sigmas[0] < 1 means video-to-video
    context: torch.Tensor                     # [1 or B, L, D] positive text embedding
    seed: int = 0                             # noise seed (noise is drawn on the CPU)
    solver: str = "unipc"                     # a name from flow.solvers.SOLVERS
    cfg: float = 5.0                          # guidance scale; 1 = no negative pass
    negative_context: torch.Tensor | None = None  # [1 or B, L', D]; needed when cfg != 1
    cfg_until: float = 0.0                    # guidance only at sigma > cfg_until (0: every step)
    noise_mask: torch.Tensor | None = None    # [B, 1, F, H, W]: 0 on a given first frame (TI2V), 1 elsewhere
    concat_latent: torch.Tensor | None = None  # Wan2.1 I2V raw image latent [1 or B, C, F, H, W]
    concat_mask: torch.Tensor | None = None   # Wan2.1 I2V mask [1, 1 or 4, F, H, W]: 0 on given frames
    clip_fea: torch.Tensor | None = None      # Wan2.1 I2V CLIP vision tokens [B, 257, 1280]
    step_cache: StepCacheConfig | None = None  # skip DiT calls adaptively (None: every step runs)


@dataclass(frozen=True)
class Expert:
    """One of several DiTs that share a schedule (see `flow.stages.Stage`), highest noise first."""
    dit: torch.nn.Module                      # the DiT (module with .config)
    sigma_min: float = 0.0                    # takes model calls at sigma >= sigma_min not taken by an earlier expert
    cfg: float | None = None                  # guidance scale on this expert; None: the request's cfg
    activate: Callable[[], Any] | None = None  # called when sampling switches to it (load it, offload the other)
    name: str = ""                            # for messages, e.g. "high-noise expert"


def check_experts_match(configs: Sequence[Any], names: Sequence[str] | None = None) -> None:
    """Experts that share one sampling run must be the same kind of model with the same shapes
    (Wan2.2 A14B's two experts differ only in their weights). Raises ValueError naming the fields
    that differ."""
    if len(configs) < 2:
        return
    names = list(names) if names is not None else [f"model {i + 1}" for i in range(len(configs))]
    first = configs[0]
    for name, other in zip(names[1:], configs[1:]):
        if type(other) is not type(first):
            raise ValueError(f"{names[0]} and {name} are different kinds of model")
        diff = [f"{f.name} {getattr(first, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in fields(first) if getattr(first, f.name) != getattr(other, f.name)]
        if diff:
            raise ValueError(f"{names[0]} and {name} must be the two experts of one model (same kind "
                             f"and shapes), but they differ: {'; '.join(diff)}. Load the high-noise "
                             f"and the low-noise file of the same Wan2.2 A14B model (both T2V or both I2V)")


def first_frame_latent(samples: torch.Tensor, noise_mask: torch.Tensor) -> torch.Tensor:
    """The given first latent frame [B, C, 1, H, W] of a TI2V latent, after checking that the
    mask is the first-frame pattern (0 on latent frame 0, 1 on every other frame)."""
    m = noise_mask.to(samples.device, torch.float32)
    if m.ndim != 5 or m.shape[2] != samples.shape[2]:
        raise ValueError(f"noise_mask {tuple(noise_mask.shape)} does not fit the latent "
                         f"{tuple(samples.shape)}; use the TI2V First-Frame node's latent unchanged")
    if not (torch.all(m[:, :, :1] == 0) and torch.all(m[:, :, 1:] == 1)):
        raise ValueError("only a first-frame noise_mask (0 on the first latent frame, 1 elsewhere) "
                         "is supported; other inpainting masks are not")
    return samples[:, :, :1]


def i2v_channels(fmt: LatentFormat, concat_latent: torch.Tensor, concat_mask: torch.Tensor | None,
                 temporal_stride: int = 4) -> torch.Tensor:
    """Wan2.1 I2V extra input channels [B, 4 + C, F, H, W]: mask (1 = given), normalised image latent."""
    image = fmt.normalize(concat_latent.float())
    b, _, f, h, w = image.shape
    if concat_mask is None:
        given = torch.zeros(b, temporal_stride, f, h, w)
        given[:, :, 0] = 1.0
    else:
        given = 1.0 - concat_mask.float()
        if given.shape[1] == 1:
            given = given.expand(-1, temporal_stride, -1, -1, -1)
        if given.shape[2:] != image.shape[2:]:
            raise ValueError(f"concat_mask {tuple(concat_mask.shape)} does not match the image latent "
                             f"{tuple(concat_latent.shape)}")
    return torch.cat([given.to(image).expand(b, -1, -1, -1, -1), image], dim=1)


@torch.no_grad()   # sampling never needs gradients; without this a caller outside ComfyUI's
                   # inference mode would keep every step's activations alive
def sample_video(dit: torch.nn.Module | Sequence[Expert], request: SampleRequest, *,
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 callback: Callable[[dict[str, Any]], None] | None = None,
                 cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """Sample and return the raw latent [B, C, F, H, W] (float32, on `device`).

    `dit` is one DiT (a module, or any callable with its signature and `.config`, such as
    `core.parallel.ParallelDiT`), or a list of `Expert`s from high noise to low (the last with
    sigma_min 0) that run in stages over the one schedule of `request.sigmas`.
    cancel: called between the DiT's blocks (it raises to stop); pass the host's interrupt check
    so a cancel stops a long step within one block. Before anything is allocated, the request is
    checked against the machine's memory (core.memory) and refused with the largest size that fits.
    """
    experts = list(dit) if isinstance(dit, (list, tuple)) else [Expert(dit)]
    if not experts or not all(isinstance(e, Expert) for e in experts):
        raise TypeError("sample_video takes a DiT module or a list of pipeline.Expert")
    check_experts_match([e.dit.config for e in experts], [e.name or f"expert {i + 1}"
                                                          for i, e in enumerate(experts)])
    cfg = experts[0].dit.config
    latent = request.latent
    if not isinstance(latent, torch.Tensor) or latent.ndim != 5:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise ValueError(f"expected a video latent [B, C, F, H, W], got {shape}; "
                         f"make it with Empty FlowDiT Video Latent or Causal VAE Encode")
    if latent.shape[1] != cfg.out_dim:
        raise ValueError(f"the latent has {latent.shape[1]} channels but this model makes "
                         f"{cfg.out_dim}: use the VAE that belongs to the model (16 channels: "
                         f"Wan2.1 VAE; 48: Wan2.2 VAE)")
    scales = [request.cfg if e.cfg is None else e.cfg for e in experts]
    for w in scales:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"cfg must be a finite number > 0 (1 = no guidance, Wan uses 5), got "
                             f"{w!r}")
    scales = [float(w) for w in scales]
    if any(w != 1.0 for w in scales) and request.negative_context is None:
        raise ValueError("cfg > 1 needs a negative conditioning; connect one or set cfg to 1")
    schedules = [guidance_interval(w, request.cfg_until) for w in scales]   # checks cfg_until
    sigmas = torch.as_tensor(request.sigmas, dtype=torch.float64).reshape(-1)
    if sigmas.numel() - 1 > MAX_STEPS:
        raise ValueError(f"{sigmas.numel() - 1} steps is more than the {MAX_STEPS} allowed; "
                         f"flow-matching video models need 4-50")
    # Before anything the size of the latent is allocated: refuse what cannot fit.
    sizes = ModelSizes.from_models(cfg, compute_dtype=dtype, base=ModelSizes())
    check_sampling_fits(tuple(latent.shape), model=sizes, cfg=any(w != 1.0 for w in scales),
                        device=device)
    samples = latent.to(device, torch.float32)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("the input latent contains NaN or infinite values; re-encode the video "
                         "or start from Empty FlowDiT Video Latent")
    # The format the model's file names (the pack's own models), else that of its latent width.
    fmt = getattr(experts[0].dit, "latent_format", None) or latent_format_for(cfg.out_dim)
    x0 = fmt.normalize(samples)
    noise = initial_noise(x0.shape, request.seed, device=device, dtype=torch.float32)
    first = None
    if request.noise_mask is not None:
        first = first_frame_latent(x0, request.noise_mask)
    extra = cfg.in_dim - cfg.out_dim
    if request.concat_latent is not None and not extra:
        raise ValueError("this is a text-to-video model: it takes no start image. Use an image-to-"
                         "video model (e.g. the Wan2.2 I2V-A14B experts), or drop the I2V Conditioning "
                         "node and start from Empty FlowDiT Video Latent")
    concat = None
    if request.concat_latent is not None:
        concat = i2v_channels(fmt, request.concat_latent.to(device), None if request.concat_mask is None
                              else request.concat_mask.to(device)).to(device)
    if extra and concat is None:
        raise ValueError(f"this model is an image-to-video model (it takes {extra} extra input "
                         f"channels); give it a start image through I2V Conditioning")
    # CLIP vision tokens feed only models with an image branch (Wan2.1 I2V); Wan2.2 A14B I2V has
    # none and, as in ComfyUI, ignores them.
    clip_fea = request.clip_fea if cfg.has_image_branch else None

    def cast(t):
        return None if t is None else t.to(device, dtype)

    def dit_call(module):
        def call(x, t, context, clip_fea=None):
            # The solver state stays float32; the DiT runs in the compute dtype.
            if cancel is None:
                return module(x.to(dtype), t, context, clip_fea=clip_fea).float()
            return module(x.to(dtype), t, context, clip_fea=clip_fea, cancel=cancel).float()
        call.config = module.config  # the sampler reads the patch size (TI2V per-token timesteps) from it
        return call

    stages = [Stage(dit_call(e.dit), e.sigma_min, w, e.activate, e.name)
              for e, w in zip(experts, schedules)]
    out = sample_stages(stages, noise, sigmas.to(device), positive=cast(request.context),
                        negative=cast(request.negative_context), solver=request.solver,
                        latent=x0 if float(sigmas[0]) < 1.0 else None, first_frame=first,
                        i2v_concat=concat, clip_fea=cast(clip_fea), callback=callback,
                        step_cache=request.step_cache)
    return fmt.denormalize(out)
