"""Where the shipped default model lives and how to load it (through the same loaders as real Wan
checkpoints: `core.load_dit`, `core.load_vae`), plus the sizes it was trained with.

    core/default_model/diffusion_models/flowdit_shapes_dit.safetensors   Wan DiT (16 channels)
    core/default_model/vae/flowdit_shapes_vae.safetensors                Wan2.1-layout VAE, z 16, x4
    core/default_model/text_encoders/flowdit_shapes_text.safetensors     word-level text encoder

The folder names are ComfyUI's model folder names, so the nodes can list these files next to the
user's own models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..dit.config import DiTConfig
from ..synthetic.shapes import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES
from ..text.encoder import TextEncoderConfig
from .settings import (DEFAULT_CFG, DEFAULT_CFG_UNTIL, DEFAULT_SHIFT,  # noqa: F401
                       DEFAULT_SOLVER, DEFAULT_STEPS, FPS, FRAMES, HEIGHT, WIDTH)

ROOT = Path(__file__).resolve().parent
DIT_PATH = ROOT / "diffusion_models" / "flowdit_shapes_dit.safetensors"
VAE_PATH = ROOT / "vae" / "flowdit_shapes_vae.safetensors"
TEXT_PATH = ROOT / "text_encoders" / "flowdit_shapes_text.safetensors"
FILES = (DIT_PATH, VAE_PATH, TEXT_PATH)

# Every word of the caption template and of the palette, in a fixed order.
VOCABULARY: tuple[str, ...] = (("a", "moving", "on", "background") + tuple(COLOURS) + SHAPES
                               + tuple(DIRECTIONS) + tuple(BACKGROUNDS))

# The DiT: Wan layout, 16 latent channels in and out (the VAE's), 2x2 patches on the 16x16 latent
# grid, 4 heads of 32 (recorded in the file's metadata: narrow Wan layouts cannot be told apart by
# their keys), text width = the text encoder's width. T2V and TI2V in one model (trained with the
# first latent frame kept clean half of the time, as Wan2.2 TI2V-5B). Built by
# `core.default_model.build` (its BUILD_DIT).
SHAPES_DIT = DiTConfig("t2v", in_dim=16, out_dim=16, dim=128, ffn_dim=512, text_dim=64,
                       num_heads=4, num_layers=4, patch_size=(1, 2, 2))
SHAPES_TEXT = TextEncoderConfig(vocab_size=len(VOCABULARY) + 2, dim=64, num_layers=2,
                                num_heads=2, max_len=16)

# Default generation settings (WIDTH, HEIGHT, FRAMES, DEFAULT_STEPS, ...; the model card's tables are
# measured at these) live in the torch-free `settings`, so the command line checks its arguments
# before importing torch; imported above and re-exported here.


@dataclass(frozen=True)
class DefaultModel:
    dit: torch.nn.Module       # core.dit.model.WanDiT
    vae: object                # core.vae.vae.WanVAE
    text: torch.nn.Module      # core.text.encoder.TextEncoder


def is_shipped() -> bool:
    """Whether all three weight files are present."""
    return all(p.is_file() for p in FILES)


def missing_message() -> str:
    missing = [str(p.relative_to(ROOT.parent.parent)) for p in FILES if not p.is_file()]
    return (f"the default model's weights are missing ({', '.join(missing)}); they ship with the "
            f"pack — reinstall it, or train them with core/default_model/MODEL_CARD.md's commands")


def load_default_model(device: str | torch.device = "cpu") -> DefaultModel:
    """The shipped default model, loaded with the pack's generic loaders."""
    from ..dit.loader import load_dit
    from ..text.encoder import load_text_encoder
    from ..vae.loader import load_vae

    if not is_shipped():
        raise FileNotFoundError(missing_message())
    return DefaultModel(dit=load_dit(DIT_PATH, device=device, dtype=torch.float32),
                        vae=load_vae(VAE_PATH, device=device),
                        text=load_text_encoder(TEXT_PATH, device=device))
