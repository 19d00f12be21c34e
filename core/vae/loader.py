"""`load_vae`: a Wan2.1 / Wan2.2 VAE from a checkpoint file or a state dict.

Accepts the official `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` (read with weights_only=True) and
ComfyUI's `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors`; the configuration is detected
from the key names and shapes. The network is built on the meta device and the weights are
assigned (no second copy, no random init). A safetensors file may name its own latent format in
its metadata (`latent_format.METADATA_KEY`); otherwise its latent width picks the format.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..checkpoint import (find_non_finite, read_metadata, read_state_dict, strip_prefix,
                          summarize_keys)
from .config import MARKER_KEY, VAEConfig, detect_config
from .latent_format import LatentFormat, format_from_metadata
from .model import WanVAEModel
from .vae import WanVAE


def _default_dtype(sd: Mapping[str, torch.Tensor], device: torch.device) -> torch.dtype:
    """float32 on the CPU (fp16/bf16 convolutions are slow or missing there); on an accelerator
    the checkpoint's own floating dtype."""
    if device.type == "cpu":
        return torch.float32
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def build_vae(config: VAEConfig, state_dict: Mapping[str, torch.Tensor],
              device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
              latent_format: LatentFormat | None = None) -> WanVAE:
    """A WanVAE of `config` holding `state_dict` (official key names, loaded strictly), with
    `latent_format` (default: the published format of its latent width)."""
    device = torch.device(device)
    dtype = dtype or _default_dtype(state_dict, device)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating type, got {dtype}")
    with torch.device("meta"):
        model = WanVAEModel(config)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    bad = find_non_finite(weights)
    if bad is not None:
        raise ValueError(f"the VAE weight {bad!r} holds NaN or infinite values (after conversion "
                         f"to {dtype}); the file is damaged — download it again")
    missing, unexpected = (sorted(set(model.state_dict()) - set(weights)),
                           sorted(set(weights) - set(model.state_dict())))
    if missing or unexpected:
        raise ValueError(f"the state dict does not fit a {config}: missing "
                         f"{summarize_keys(missing)}; unexpected {summarize_keys(unexpected)}")
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as err:  # shape mismatches: a damaged or inconsistent file
        raise ValueError(f"the state dict does not fit a {config}: {err}") from err
    return WanVAE(model, latent_format)


def load_vae(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
             device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> WanVAE:
    """Load a Wan VAE. `dtype=None`: float32 on CPU, the checkpoint's dtype elsewhere.

    Raises ValueError (naming the file and what was expected) for foreign or damaged files.
    """
    sd = strip_prefix(read_state_dict(path_or_state_dict, "cpu"), marker_key=MARKER_KEY)
    name = (os.path.basename(os.fspath(path_or_state_dict))
            if not isinstance(path_or_state_dict, Mapping) else "state dict")
    try:
        config = detect_config(sd)
    except ValueError as err:
        raise ValueError(f"{name}: not a Wan VAE checkpoint ({err})") from err
    fmt = None
    if not isinstance(path_or_state_dict, Mapping):     # a file may name its own latent format
        fmt = format_from_metadata(read_metadata(path_or_state_dict), name)
        if fmt is not None and fmt.channels != config.z_dim:
            raise ValueError(f"{name}: its latent format {fmt.name!r} has {fmt.channels} channels "
                             f"but the VAE has {config.z_dim}; the file is inconsistent")
    return build_vae(config, sd, device, dtype, fmt)
