"""Latent formats: the per-channel statistics that turn raw VAE latents into the normalised
latents the DiT is trained on, and back.

    normalised = (raw - mean) / std          raw = normalised * std + mean

ComfyUI passes raw VAE latents between nodes (its model wrapper normalises inside); the FlowDiT
core sampler works on normalised latents. The numbers are the published Wan statistics (they also
appear in ComfyUI's `latent_formats.Wan21` / `Wan22`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from einops import rearrange


@dataclass(frozen=True)
class LatentFormat:
    name: str                    # human-readable, e.g. "wan2.1"
    mean: tuple[float, ...]      # per-channel mean of raw latents
    std: tuple[float, ...]       # per-channel standard deviation of raw latents
    # Optional linear map raw latent -> RGB in [-1, 1] for live previews: one (r, g, b) row per
    # channel, plus a bias. None where previews come from elsewhere (ComfyUI knows the Wan ones).
    rgb_factors: tuple[tuple[float, float, float], ...] | None = None
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"latent format {self.name}: mean and std need one value per channel")
        if min(self.std) <= 0:
            raise ValueError(f"latent format {self.name}: std must be positive")
        if self.rgb_factors is not None and len(self.rgb_factors) != len(self.mean):
            raise ValueError(f"latent format {self.name}: rgb_factors need one row per channel")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if like.shape[1] != self.channels:
            raise ValueError(f"latent has {like.shape[1]} channels, the {self.name} latent format "
                             f"has {self.channels}")
        # Stats in at least float32 so bf16 latents are not normalised with rounded constants.
        dtype = torch.promote_types(like.dtype, torch.float32)
        mean = torch.tensor(self.mean, dtype=dtype, device=like.device)
        std = torch.tensor(self.std, dtype=dtype, device=like.device)
        shape = "c -> c" + " 1" * (like.dim() - 2)  # broadcast over (F,) H, W
        return rearrange(mean, shape), rearrange(std, shape)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] raw VAE latent -> normalised latent (dtype >= float32)."""
        mean, std = self._stats(raw)
        return (raw.to(mean.dtype) - mean) / std

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] normalised latent -> raw VAE latent (dtype >= float32)."""
        mean, std = self._stats(latent)
        return latent.to(mean.dtype) * std + mean

    def preview_rgb(self, latent: torch.Tensor) -> torch.Tensor | None:
        """Normalised latent [B, C, F, H, W] -> a rough RGB image [H, W, 3] in [-1, 1] of its first
        frame (sample 0), or None when this format has no preview factors."""
        if self.rgb_factors is None:
            return None
        raw = self.denormalize(latent[:1, :, :1])[0, :, 0]                     # [C, H, W]
        factors = torch.tensor(self.rgb_factors, dtype=raw.dtype, device=raw.device)  # [C, 3]
        bias = torch.tensor(self.rgb_bias, dtype=raw.dtype, device=raw.device)        # [3]
        return (torch.einsum("chw,cr->hwr", raw, factors) + bias).clamp(-1.0, 1.0)


WAN21 = LatentFormat(
    name="wan2.1",
    mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
          0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
         3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160),
)

WAN22 = LatentFormat(
    name="wan2.2",
    mean=(-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
          -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
          -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
          -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
          -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
          0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667),
    std=(0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
         0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
         0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
         0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
         0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
         0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744),
)


# The pack's own default model (core/default_model): its VAE's latents are unit-scale by
# construction (identity statistics). Preview factors: least-squares fit of the mean RGB of each
# 8x8 pixel block on the raw latent of the shipped VAE, over 48 procedural frames (R^2 0.86).
FLOWDIT_SHAPES = LatentFormat(
    name="flowdit-shapes", mean=(0.0,) * 8, std=(1.0,) * 8,
    rgb_factors=((0.0968, -0.1866, -0.3118), (-0.7561, -0.2595, -0.4235), (0.1436, 0.2300, -0.0368),
                 (0.2930, 0.2415, -0.3851), (0.3001, -0.3390, 0.0867), (0.2359, -0.1560, -0.0215),
                 (0.0951, -0.0050, -0.0663), (-0.1822, -0.4864, -0.1065)),
    rgb_bias=(-0.4139, -0.7925, 0.0083),
)


def identity_format(channels: int) -> LatentFormat:
    """Mean 0, std 1: for latent spaces without published statistics (e.g. test models)."""
    return LatentFormat(name=f"identity{channels}", mean=(0.0,) * channels, std=(1.0,) * channels)


def latent_format_for(z_dim: int) -> LatentFormat:
    """The statistics for a latent width: 16 -> Wan2.1, 48 -> Wan2.2 (published), 8 -> the pack's
    own default model (identity statistics, with preview factors); others: identity."""
    return {16: WAN21, 48: WAN22, 8: FLOWDIT_SHAPES}.get(z_dim) or identity_format(z_dim)


# A weights file may name its own latent format in its safetensors metadata, under this key, as
# JSON {"name", "mean", "std", optional "rgb_factors", "rgb_bias"}: a model whose latent width
# matches a published format's (16 channels: Wan2.1) but whose previews need other factors.
METADATA_KEY = "latent_format"


def format_metadata(fmt: LatentFormat) -> dict[str, str]:
    """The metadata entry that makes a loader read `fmt` back (`format_from_metadata`)."""
    return {METADATA_KEY: json.dumps(asdict(fmt))}


def format_from_metadata(metadata: Mapping[str, str], source: str = "file") -> LatentFormat | None:
    """The latent format a file's metadata names, or None when it names none. ValueError, naming
    `source`, for an entry that is not a valid format."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        spec = json.loads(text)
        rgb = spec.get("rgb_factors")
        return LatentFormat(
            name=str(spec["name"]), mean=tuple(float(v) for v in spec["mean"]),
            std=tuple(float(v) for v in spec["std"]),
            rgb_factors=None if rgb is None else tuple(tuple(float(v) for v in row) for row in rgb),
            rgb_bias=tuple(float(v) for v in spec.get("rgb_bias", (0.0, 0.0, 0.0))))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"{source}: its {METADATA_KEY!r} metadata is not a valid latent format "
                         f"({err}); the file is damaged or was written by another tool") from err
