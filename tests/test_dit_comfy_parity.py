"""Parity with ComfyUI's own Wan implementation (comfy/ldm/wan/model.py, WanModel): the same random
weights and inputs must give the same velocity, fp32, max abs diff <= 1e-4.

Runs only with COMFYUI_PATH naming a ComfyUI checkout whose dependencies are importable (run it
with that ComfyUI's Python). ComfyUI is imported inside the fixture only, never at module import.
"""
from __future__ import annotations

import pytest
import torch

from core.dit import get_preset, load_dit
from core.dit.random_weights import random_state_dict

TOLERANCE = 1e-4  # max abs diff, fp32 (the bound)


@pytest.fixture(scope="module")
def comfy_wan(comfy):
    """ComfyUI's WanModel class and the ops it is built with (CPU, plain SDPA; see conftest)."""
    return comfy("comfy.ldm.wan.model").WanModel, comfy("comfy.ops").disable_weight_init


def _comfy_model(comfy_wan, cfg, sd):
    WanModel, operations = comfy_wan
    # ComfyUI has no 'ti2v' type: Wan2.2 TI2V-5B is its 't2v' with 48 in/out channels; likewise a
    # Wan2.2 I2V-A14B expert (no CLIP branch) is its 't2v' with 36 input channels.
    model = WanModel(model_type="i2v" if cfg.has_image_branch else "t2v", patch_size=cfg.patch_size,
                     in_dim=cfg.in_dim, out_dim=cfg.out_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim,
                     freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, num_heads=cfg.num_heads,
                     num_layers=cfg.num_layers, qk_norm=cfg.qk_norm,
                     cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps, device="cpu",
                     dtype=torch.float32, operations=operations)
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.mark.comfyui
@pytest.mark.parametrize("preset", ["tiny-t2v", "tiny-i2v", "tiny-i2v-a14b", "tiny-ti2v"])
@pytest.mark.parametrize("per_token", [False, True], ids=["scalar_t", "per_token_t"])
def test_velocity_matches_comfyui(comfy_wan, preset, per_token):
    cfg = get_preset(preset)
    sd = random_state_dict(cfg, seed=3)
    ours = load_dit(sd, dtype=torch.float32, num_heads=cfg.num_heads)
    theirs = _comfy_model(comfy_wan, cfg, sd)

    gen = torch.Generator().manual_seed(11)
    batch, frames, height, width = 2, 3, 6, 8
    x = torch.randn(batch, cfg.in_dim, frames, height, width, generator=gen)
    context = torch.randn(batch, 9, cfg.text_dim, generator=gen)
    clip_fea = torch.randn(batch, 257, cfg.image_dim, generator=gen) if cfg.has_image_branch else None
    tokens = frames * (height // 2) * (width // 2)
    if per_token:
        # TI2V style: the first latent frame's tokens are clean (t = 0), the rest at t.
        t = torch.tensor([[0.0] * (tokens // frames) + [t0] * (tokens - tokens // frames)
                          for t0 in (937.5, 412.0)])
    else:
        t = torch.tensor([937.5, 412.0])

    with torch.no_grad():
        v_ours = ours(x, t, context, clip_fea)
        v_theirs = theirs(x, t, context, clip_fea=clip_fea)
    diff = (v_ours - v_theirs).abs().max().item()
    print(f"{preset} {'per-token' if per_token else 'scalar'} t: max abs diff {diff:.3g}")
    assert v_ours.shape == v_theirs.shape == (batch, cfg.out_dim, frames, height, width)
    assert diff <= TOLERANCE, diff
