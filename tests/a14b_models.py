"""Tiny stand-ins for the Wan2.2 A14B files the shipped workflows name (random weights), for the
node, parity and ComfyUI-server tests. Not a test module (no test_ prefix).

The experts are written in ComfyUI's fp8_scaled layouts (I2V in the newer `weight_scale` /
`comfy_quant` one, T2V in the older `scaled_fp8` / `scale_weight` one, so both are exercised), the
4-step LoRAs in the Lightning (I2V) and LightX2V (T2V) layouts; every test that places these
files follows.
"""
from __future__ import annotations

from pathlib import Path

# The file names of ComfyUI's Wan2.2 14B templates.
I2V_HIGH = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
I2V_LOW = "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
T2V_HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
T2V_LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
I2V_LORA_HIGH = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
I2V_LORA_LOW = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
T2V_LORA_HIGH = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors"
T2V_LORA_LOW = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"

# file name -> (kind, seed); each expert gets its own random weights.
EXPERT_FILES = {I2V_HIGH: ("i2v", 11), I2V_LOW: ("i2v", 12), T2V_HIGH: ("t2v", 13), T2V_LOW: ("t2v", 14)}
LORA_FILES = {I2V_LORA_HIGH: ("i2v", 21), I2V_LORA_LOW: ("i2v", 22),
              T2V_LORA_HIGH: ("t2v", 23), T2V_LORA_LOW: ("t2v", 24)}


def a14b_config(kind: str, **overrides):
    """A tiny config shaped like a Wan2.2 A14B expert: T2V in_dim 16; I2V in_dim 36 and no CLIP
    image branch."""
    from core.dit.config import get_preset

    return get_preset("tiny-i2v-a14b" if kind == "i2v" else "tiny-t2v", **overrides)


def write_expert(path: Path, kind: str, seed: int) -> None:
    """A tiny random expert under a real file name, in one of ComfyUI's fp8_scaled layouts."""
    from core.dit.random_weights import write_random_dit

    path.parent.mkdir(parents=True, exist_ok=True)
    write_random_dit(a14b_config(kind), path, seed=seed, fp8_scaled="new" if kind == "i2v" else "old")


def write_distill_lora(path: Path, kind: str, seed: int) -> None:
    """A tiny rank-4 distill LoRA for an expert (Lightning layout for I2V, LightX2V for T2V)."""
    from safetensors.torch import save_file

    from core.dit.random_weights import random_distill_lora

    path.parent.mkdir(parents=True, exist_ok=True)
    layout = "lightning" if kind == "i2v" else "lightx2v"
    save_file(random_distill_lora(a14b_config(kind), rank=4, seed=seed, layout=layout), str(path))


def write_a14b_files(models: Path) -> None:
    """Every A14B expert and LoRA the shipped workflows name, under models/<folder>/."""
    for name, (kind, seed) in EXPERT_FILES.items():
        write_expert(models / "diffusion_models" / name, kind, seed)
    for name, (kind, seed) in LORA_FILES.items():
        write_distill_lora(models / "loras" / name, kind, seed)
