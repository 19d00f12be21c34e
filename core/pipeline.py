"""From ComfyUI-convention inputs (raw VAE latents, per-frame masks) to a sampled raw latent.

The nodes and the command line both call `sample_video`: it normalises the latent with the
model's latent format, draws the seeded noise, translates TI2V/I2V conditioning into the forms
`flow.sampler.sample` takes, samples, and returns the raw latent again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .flow.noise import initial_noise
from .flow.sampler import sample
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
    noise_mask: torch.Tensor | None = None    # [B, 1, F, H, W]: 0 on a given first frame (TI2V), 1 elsewhere
    concat_latent: torch.Tensor | None = None  # Wan2.1 I2V raw image latent [1 or B, C, F, H, W]
    concat_mask: torch.Tensor | None = None   # Wan2.1 I2V mask [1, 1 or 4, F, H, W]: 0 on given frames
    clip_fea: torch.Tensor | None = None      # Wan2.1 I2V CLIP vision tokens [B, 257, 1280]
    step_cache: StepCacheConfig | None = None  # skip DiT calls adaptively (None: every step runs)


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


def sample_video(dit: torch.nn.Module, request: SampleRequest, *, device: torch.device,
                 dtype: torch.dtype = torch.float32,
                 callback: Callable[[dict[str, Any]], None] | None = None) -> torch.Tensor:
    """Sample and return the raw latent [B, C, F, H, W] (float32, on `device`)."""
    cfg = dit.config
    samples = request.latent.to(device, torch.float32)
    if samples.ndim != 5:
        raise ValueError(f"expected a video latent [B, C, F, H, W], got shape {tuple(samples.shape)}; "
                         f"make it with Empty FlowDiT Video Latent or Causal VAE Encode")
    if samples.shape[1] != cfg.out_dim:
        raise ValueError(f"the latent has {samples.shape[1]} channels but this model makes "
                         f"{cfg.out_dim}: use the VAE that belongs to the model (16 channels: "
                         f"Wan2.1 VAE; 48: Wan2.2 VAE)")
    if request.cfg != 1.0 and request.negative_context is None:
        raise ValueError("cfg > 1 needs a negative conditioning; connect one or set cfg to 1")
    fmt = latent_format_for(cfg.out_dim)
    x0 = fmt.normalize(samples)
    sigmas = torch.as_tensor(request.sigmas, dtype=torch.float64).reshape(-1)
    noise = initial_noise(x0.shape, request.seed, device=device, dtype=torch.float32)
    first = None
    if request.noise_mask is not None:
        first = first_frame_latent(x0, request.noise_mask)
    concat = None
    if request.concat_latent is not None:
        concat = i2v_channels(fmt, request.concat_latent.to(device), None if request.concat_mask is None
                              else request.concat_mask.to(device)).to(device)
    extra = cfg.in_dim - cfg.out_dim
    if extra and concat is None:
        raise ValueError(f"this model is an image-to-video model (it takes {extra} extra input "
                         f"channels); give it a start image through I2V Conditioning")

    def cast(t):
        return None if t is None else t.to(device, dtype)

    def dit_call(x, t, context, clip_fea=None):
        # The solver state stays float32; the DiT runs in the compute dtype.
        return dit(x.to(dtype), t, context, clip_fea=clip_fea).float()

    dit_call.config = cfg  # the sampler reads the patch size (TI2V per-token timesteps) from it

    out = sample(dit_call, noise, sigmas.to(device), positive=cast(request.context),
                 negative=cast(request.negative_context), cfg=request.cfg, solver=request.solver,
                 latent=x0 if float(sigmas[0]) < 1.0 else None, first_frame=first,
                 i2v_concat=concat, clip_fea=cast(request.clip_fea), callback=callback,
                 step_cache=request.step_cache)
    return fmt.denormalize(out)
