"""What travels on the pack's own sockets. Everything else uses ComfyUI's native types (LATENT,
IMAGE, CONDITIONING, SIGMAS, SAMPLER), so the pack composes with the core nodes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.flow.step_cache import StepCacheConfig
from .host import HostedModel

MODEL_TYPE = "FLOWDIT_MODEL"   # a Wan-family DiT loaded by FlowDiT
VAE_TYPE = "FLOWDIT_VAE"       # a Wan-family causal video VAE loaded by FlowDiT


@dataclass(frozen=True)
class ModelHandle:
    """A loaded DiT: the module under ComfyUI's memory manager, and how to run it."""
    hosted: HostedModel          # the DiT module (ModelPatcher inside ComfyUI)
    name: str                    # file name, for messages
    compute_dtype: torch.dtype   # activations dtype on the compute device
    step_cache: StepCacheConfig | None = None  # set by FlowDiT Step Cache; None = every step runs

    @property
    def module(self) -> torch.nn.Module:
        return self.hosted.module

    @property
    def config(self):
        return self.hosted.module.config


@dataclass(frozen=True)
class ExpertPair:
    """Wan2.2 A14B: a high-noise and a low-noise expert that one sampler runs in stages. Travels on
    the model socket, so the existing sampler takes it."""
    high: ModelHandle            # runs the high-noise steps
    low: ModelHandle             # runs the rest
    switch: str                  # "boundary": sigma >= boundary -> high; "step": steps [0, switch_step) -> high
    boundary: float              # used when switch == "boundary"
    switch_step: int             # used when switch == "step"
    cfg_high: float | None       # guidance scale on each expert; None: the sampler's cfg
    cfg_low: float | None
    step_cache: StepCacheConfig | None = None  # set by FlowDiT Step Cache; reset at the switch

    @property
    def config(self):
        return self.high.config

    @property
    def name(self) -> str:
        return f"{self.high.name} + {self.low.name}"

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.high.compute_dtype

    @property
    def hosted(self):
        raise ValueError("this is a pair of experts: apply a LoRA to each expert before pairing them "
                         "(Load FlowDiT -> Load LoRA -> Wan2.2 A14B Experts)")

    @property
    def module(self):
        raise ValueError("this is a pair of experts; connect it to the Euler Flow Sampler")


@dataclass(frozen=True)
class VAEHandle:
    """A loaded causal VAE (core.load_vae's object) and its module under the memory manager."""
    vae: object                  # core VAE object: encode/decode, latent_channels, strides
    hosted: HostedModel          # the VAE's torch module, for device placement
    name: str

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def spatial_stride(self) -> int:
        return self.vae.spatial_stride

    @property
    def temporal_stride(self) -> int:
        return self.vae.temporal_stride
