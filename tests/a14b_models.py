"""Tiny stand-ins for the Wan2.2 A14B files the shipped workflows name (random weights), for the
node, parity and ComfyUI-server tests. Not a test module (no test_ prefix).

MERGE POINT: until the model-files work lands, the experts are written as plain safetensors and
the 4-step LoRAs in the layout `core.train.lora.save_lora` writes. Swap `write_expert` for
ComfyUI's fp8_scaled layout and `write_distill_lora` for the Lightning/LightX2V layout here, and
every test that places these files follows.
"""
from __future__ import annotations

from pathlib import Path

import torch

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
    from core.dit.config import PRESETS, get_preset

    preset = f"tiny-{kind}-a14b"
    if preset in PRESETS:
        return get_preset(preset, **overrides)
    if kind == "i2v":  # before A14B detection existed: the same tensors, labelled t2v 36/16
        return get_preset("tiny-t2v", **{"in_dim": 36, **overrides})
    return get_preset("tiny-t2v", **overrides)


def write_expert(path: Path, kind: str, seed: int) -> None:
    """A tiny random expert under a real file name (MERGE POINT: fp8_scaled layout)."""
    from safetensors.torch import save_file

    from core.dit.random_weights import random_state_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(random_state_dict(a14b_config(kind), seed=seed), str(path))


def write_distill_lora(path: Path, kind: str, seed: int) -> None:
    """A tiny rank-4 LoRA for an expert with non-zero up weights (MERGE POINT: Lightning layout)."""
    from core.dit.model import WanDiT
    from core.train.lora import LoRAConfig, add_lora, lora_layers, save_lora

    path.parent.mkdir(parents=True, exist_ok=True)
    dit = WanDiT(a14b_config(kind))
    add_lora(dit, LoRAConfig(rank=4), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in lora_layers(dit).values():
            layer.lora_up.weight.copy_(0.2 * torch.randn(layer.lora_up.weight.shape, generator=g))
    save_lora(dit, path)


def write_a14b_files(models: Path) -> None:
    """Every A14B expert and LoRA the shipped workflows name, under models/<folder>/."""
    for name, (kind, seed) in EXPERT_FILES.items():
        write_expert(models / "diffusion_models" / name, kind, seed)
    for name, (kind, seed) in LORA_FILES.items():
        write_distill_lora(models / "loras" / name, kind, seed)
