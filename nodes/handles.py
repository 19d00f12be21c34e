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
