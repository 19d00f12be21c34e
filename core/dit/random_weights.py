"""Random weights in the official Wan key layout, for tests and benchmarks (nothing here can
download real checkpoints). Unlike `initialize_weights()`, nothing is zeroed, so every path of
the model contributes to the output.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import DiTConfig, dit_metadata
from .model import WanDiT


def random_state_dict(config: DiTConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """{official key: tensor} for `config`, deterministic in `seed`.

    device="meta" gives shapes only (cheap even for 14B). Scales keep activations O(1): weights
    N(0, 1/fan_in), biases N(0, 0.02²), norm gains 1 + N(0, 0.1²), modulation N(0, 0.1²).
    """
    shapes = {k: v.shape for k, v in WanDiT(config, device="meta").state_dict().items()}
    if torch.device(device).type == "meta":
        return {k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith("modulation"):
            value = 0.1 * noise
        elif len(shape) >= 2:
            value = noise / shape[1:].numel() ** 0.5
        elif "norm" in key or key.startswith("img_emb.proj.0.") or key.startswith("img_emb.proj.4."):
            value = (1 + 0.1 * noise) if key.endswith("weight") else 0.02 * noise
        else:
            value = 0.02 * noise
        out[key] = value.to(device=device, dtype=dtype)
    return out


def write_random_dit(config: DiTConfig, path: str | os.PathLike, seed: int = 0,
                     dtype: torch.dtype = torch.float32, fp8_scaled: str | None = None,
                     prefix: str = "", **fp8_options) -> Path:
    """Write a random DiT file of `config` (with the pack's `num_heads` metadata): a plain
    safetensors file, or with fp8_scaled='old' / 'new' one of ComfyUI's fp8_scaled layouts (see
    core/dit/scaled_fp8.py `save_scaled_fp8`; fp8_options go there). For tests that place tiny
    models under real file names, e.g. wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors."""
    from ..train.checkpointing import save_tensors
    from .scaled_fp8 import save_scaled_fp8

    sd = random_state_dict(config, seed=seed, dtype=torch.float32)
    if fp8_scaled is not None:
        return save_scaled_fp8(sd, path, fp8_scaled, prefix=prefix, metadata=dit_metadata(config),
                               dtype=dtype, **fp8_options)
    return save_tensors({prefix + k: v.to(dtype) for k, v in sd.items()}, path,
                        metadata=dit_metadata(config))


# The layouts of the Wan2.2-Lightning / LightX2V 4-step distill LoRAs (one file per expert):
# low-rank pairs `diffusion_model.<layer>.lora_down/lora_up.weight` + `.alpha` (fp32) on every linear
# layer of the blocks; LightX2V's files add full deltas `.diff` for norm gains, `.diff_b` for
# biases and `blocks.N.diff_m` for the block modulation (which ComfyUI does not apply).
DISTILL_LORA_LAYOUTS = ("lightning", "lightx2v")


def random_distill_lora(config: DiTConfig, rank: int = 4, seed: int = 0, layout: str = "lightx2v",
                        scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A random LoRA for `config` in a distill-LoRA layout (for tests; see DISTILL_LORA_LAYOUTS).
    Deltas are `scale` times N(0, 1) sized like the weights they change."""
    if layout not in DISTILL_LORA_LAYOUTS:
        raise ValueError(f"layout must be one of {DISTILL_LORA_LAYOUTS}, got {layout!r}")
    shapes = {k: v.shape for k, v in WanDiT(config, device="meta").state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if not key.startswith("blocks."):
            continue
        stem = "diffusion_model." + key.rsplit(".", 1)[0]
        if key.endswith(".weight") and len(shape) == 2:
            out[stem + ".lora_down.weight"] = torch.randn(rank, shape[1], generator=gen) / shape[1] ** 0.5
            out[stem + ".lora_up.weight"] = scale * torch.randn(shape[0], rank, generator=gen)
            out[stem + ".alpha"] = torch.tensor(float(rank) / 2)
        elif layout == "lightx2v" and key.endswith(".bias"):
            out[stem + ".diff_b"] = scale * torch.randn(shape, generator=gen)
        elif layout == "lightx2v" and key.endswith(".weight"):          # norm gains
            out[stem + ".diff"] = scale * torch.randn(shape, generator=gen)
        elif layout == "lightx2v" and key.endswith(".modulation"):
            out[f"diffusion_model.{key.removesuffix('.modulation')}.diff_m"] = \
                scale * torch.randn(shape, generator=gen)
    return out
