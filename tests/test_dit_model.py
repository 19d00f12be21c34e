"""Properties of the DiT itself: patchify, RoPE, AdaLN-Zero, per-token timesteps, dtypes, and the
errors a user gets for inputs the model cannot take. Tiny configs, CPU, float64 where comparing math.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from core.dit import available_attention_backends, get_preset, load_dit
from core.dit.attention import SelfAttention, get_attention_backend
from core.dit.config import DiTConfig
from core.dit.model import WanDiT
from core.dit.ops import CastOps
from core.dit.patching import patchify, unpatchify
from core.dit.random_weights import random_state_dict
from core.dit.rope import apply_rope, grid_positions, rope_axes_dims, rope_tables

F64 = {"rtol": 1e-10, "atol": 1e-10}   # same math, float64: only rounding differs


def _inputs(cfg: DiTConfig, batch=2, frames=3, height=4, width=6, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, frames, height, width, generator=gen, dtype=dtype)
    context = torch.randn(batch, 5, cfg.text_dim, generator=gen, dtype=dtype)
    clip = (torch.randn(batch, 16, cfg.image_dim, generator=gen, dtype=dtype)
            if cfg.has_image_branch else None)
    return x, context, clip


@pytest.fixture(scope="module")
def model64():
    cfg = get_preset("tiny-ti2v")
    return load_dit(random_state_dict(cfg, seed=1, dtype=torch.float64), dtype=torch.float64,
                    num_heads=cfg.num_heads)


# --- patchify ---------------------------------------------------------------------------------

def test_patchify_unpatchify_round_trip():
    x = torch.randn(2, 5, 4, 6, 8, dtype=torch.float64)
    tokens = patchify(x, (2, 2, 2))
    assert tokens.shape == (2, 2 * 3 * 4, 2 * 2 * 2 * 5)
    assert torch.equal(unpatchify(tokens, (2, 3, 4), (2, 2, 2)), x)


def test_patch_embedding_conv_equals_linear_on_patches():
    # The Conv3d patch embedding is a linear map on each patch: tokens are f-major, then h, w.
    cfg = get_preset("tiny-t2v")
    model = WanDiT(cfg, compute_dtype=torch.float64, dtype=torch.float64)
    x = torch.randn(1, cfg.in_dim, 2, 4, 6, dtype=torch.float64)
    conv = model.patch_embedding(x).flatten(2).transpose(1, 2)          # [B, L, D]
    w = model.patch_embedding.weight.permute(0, 2, 3, 4, 1).reshape(cfg.dim, -1)  # (pf ph pw C)
    assert_close(conv, patchify(x, cfg.patch_size) @ w.T + model.patch_embedding.bias, **F64)


# --- RoPE -------------------------------------------------------------------------------------

def test_rope_axes_split_as_in_the_checkpoints():
    assert rope_axes_dims(128) == (44, 42, 42)
    assert rope_axes_dims(32) == (12, 10, 10)


def test_rope_scores_depend_only_on_relative_position():
    head_dim, gen = 32, torch.Generator().manual_seed(0)
    positions = grid_positions(3, 4, 5)                                  # [L, 3]
    q = torch.randn(1, positions.shape[0], 2, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(1, positions.shape[0], 2, head_dim, generator=gen, dtype=torch.float64)

    def scores(pos):
        rope = rope_tables(pos, head_dim, dtype=torch.float64)
        return torch.einsum("blhd,bmhd->bhlm", apply_rope(q, rope), apply_rope(k, rope))

    shifted = positions + torch.tensor([7, 3, 11])
    assert_close(scores(shifted), scores(positions), rtol=1e-9, atol=1e-9)
    # ... and the rotation does change scores when positions differ relative to each other.
    assert not torch.allclose(scores(positions * 2), scores(positions))


def test_rope_is_a_rotation():
    rope = rope_tables(grid_positions(2, 3, 4), 32, dtype=torch.float64)
    x = torch.randn(1, 24, 2, 32, dtype=torch.float64)
    assert_close(apply_rope(x, rope).norm(dim=-1), x.norm(dim=-1), **F64)
    assert_close(apply_rope(x, rope)[:, 0], x[:, 0], **F64)             # position (0, 0, 0)


# --- AdaLN-Zero -------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["tiny-t2v", "tiny-i2v", "tiny-ti2v"])
def test_fresh_model_outputs_zeros_and_blocks_are_identity(preset):
    cfg = get_preset(preset)
    torch.manual_seed(0)
    model = WanDiT(cfg, compute_dtype=torch.float64, dtype=torch.float64)
    x, context, clip = _inputs(cfg)
    assert torch.count_nonzero(model(x, torch.tensor([999.0, 10.0]), context, clip)) == 0

    captured = []
    hooks = [b.register_forward_hook(lambda m, args, out: captured.append((args[0], out)))
             for b in model.blocks]
    model(x, torch.tensor([500.0, 250.0]), context, clip)
    for h in hooks:
        h.remove()
    assert len(captured) == cfg.num_layers
    for block_in, block_out in captured:
        assert torch.equal(block_in, block_out)


# --- timesteps --------------------------------------------------------------------------------

def test_per_token_t_equal_everywhere_equals_scalar_t(model64):
    cfg = model64.config
    x, context, _ = _inputs(cfg)
    tokens = 3 * 2 * 3
    t = torch.tensor([800.0, 123.5], dtype=torch.float64)
    v_scalar = model64(x, t, context)
    v_tokens = model64(x, t[:, None].expand(2, tokens), context)
    assert_close(v_tokens, v_scalar, **F64)


def test_per_frame_t_equals_its_per_token_expansion(model64):
    cfg = model64.config
    x, context, _ = _inputs(cfg)
    per_frame = torch.tensor([[0.0, 700.0, 700.0], [0.0, 300.0, 300.0]], dtype=torch.float64)
    per_token = per_frame.repeat_interleave(2 * 3, dim=1)               # 6 tokens per frame
    assert_close(model64(x, per_frame, context), model64(x, per_token, context), **F64)


def test_per_token_t_acts_per_token(model64):
    # Changing the timestep of the first frame's tokens changes the output (the model sees it).
    cfg = model64.config
    x, context, _ = _inputs(cfg)
    t = torch.full((2, 18), 600.0, dtype=torch.float64)
    t0 = t.clone()
    t0[:, :6] = 0.0
    assert not torch.allclose(model64(x, t, context), model64(x, t0, context))


def test_batch_elements_are_independent(model64):
    x, context, _ = _inputs(model64.config)
    t = torch.tensor([900.0, 100.0], dtype=torch.float64)
    both = model64(x, t, context)
    one = model64(x[1:], t[1:], context[1:])
    assert_close(both[1:], one, **F64)


# --- dtypes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_weight_storage_runs_close_to_fp32(weight_dtype):
    cfg = get_preset("tiny-t2v")
    sd = random_state_dict(cfg, seed=2)
    ref = load_dit(sd, dtype=torch.float32, num_heads=cfg.num_heads)
    fp8 = load_dit(sd, dtype=torch.float32, weight_dtype=weight_dtype, num_heads=cfg.num_heads)
    assert fp8.blocks[0].ffn[0].weight.dtype == weight_dtype
    assert fp8.blocks[0].modulation.dtype == torch.float32            # fp32 islands untouched
    x, context, _ = _inputs(cfg, dtype=torch.float32)
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        v_ref, v_fp8 = ref(x, t, context), fp8(x, t, context)
    assert v_fp8.dtype == torch.float32 and torch.isfinite(v_fp8).all()
    # fp8 keeps 3 (e4m3) or 2 (e5m2) mantissa bits: a few percent relative error per weight.
    rel = ((v_fp8 - v_ref).norm() / v_ref.norm()).item()
    assert rel < (0.08 if weight_dtype == torch.float8_e4m3fn else 0.15), rel


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_compute_runs_close_to_fp32(dtype):
    cfg = get_preset("tiny-t2v")
    sd = random_state_dict(cfg, seed=2)
    x, context, _ = _inputs(cfg, dtype=torch.float32)
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        v_ref = load_dit(sd, dtype=torch.float32, num_heads=cfg.num_heads)(x, t, context)
        half = load_dit(sd, dtype=dtype, num_heads=cfg.num_heads)
        v_half = half(x, t, context)
    assert half.blocks[0].self_attn.q.weight.dtype == dtype           # narrowed, not kept fp32
    assert v_half.dtype == torch.float32                               # returned in x's dtype
    assert ((v_half - v_ref).norm() / v_ref.norm()).item() < 0.03     # bf16: 8 mantissa bits


def test_custom_operations_are_injected():
    class MarkedLinear(CastOps.Linear):
        pass

    class Ops(CastOps):
        Linear = MarkedLinear

    model = WanDiT(get_preset("tiny-t2v"), device="meta", operations=Ops)
    assert isinstance(model.blocks[1].cross_attn.o, MarkedLinear)
    assert isinstance(model.text_embedding[0], MarkedLinear)


# --- attention backends -----------------------------------------------------------------------

def test_attention_backends():
    assert "sdpa" in available_attention_backends()
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_attention_backend("xformers-ish")
    for name in ("flash_attn", "sageattention"):
        if name not in available_attention_backends():
            with pytest.raises(ValueError, match="not installed"):
                WanDiT(get_preset("tiny-t2v"), device="meta", attention=name)


def test_sdpa_matches_explicit_softmax_attention():
    attn = SelfAttention(64, 2, True, 1e-6, CastOps, dtype=torch.float64)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 12, 64, dtype=torch.float64)
    rope = rope_tables(grid_positions(1, 3, 4), 32, dtype=torch.float64)

    def explicit(q, k, v):
        w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / q.shape[-1] ** 0.5, dim=-1)
        return torch.einsum("bhlm,bmhd->blhd", w, v).flatten(2)

    assert_close(attn(x, rope, get_attention_backend("sdpa")), attn(x, rope, explicit), **F64)


# --- bad input --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t2v():
    return load_dit(random_state_dict(get_preset("tiny-t2v")), num_heads=get_preset("tiny-t2v").num_heads)


def test_wrong_latent_channels(t2v):
    x = torch.randn(1, 48, 2, 4, 4)
    with pytest.raises(ValueError, match=r"48 channels but this t2v model takes 16.*VAE"):
        t2v(x, torch.tensor([500.0]), torch.randn(1, 4, 4096))


def test_spatial_size_not_divisible_by_patch(t2v):
    x = torch.randn(1, 16, 2, 5, 4)
    with pytest.raises(ValueError, match="height 5 is not divisible by the patch size 2"):
        t2v(x, torch.tensor([500.0]), torch.randn(1, 4, 4096))


def test_context_wrong_width(t2v):
    with pytest.raises(ValueError, match=r"context must be text embeddings \[B, L_text, 4096\].*umT5"):
        t2v(torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 4, 768))


def test_context_wrong_batch(t2v):
    with pytest.raises(ValueError, match="context has batch 2 but x has batch 1"):
        t2v(torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(2, 4, 4096))


@pytest.mark.parametrize("shape", [(3,), (1, 5), (1, 8, 1), (2, 8)])
def test_t_wrong_shape(t2v, shape):
    with pytest.raises(ValueError, match=r"t has shape .* needs \[B\] = \[1\]"):
        t2v(torch.randn(1, 16, 2, 4, 4), torch.full(shape, 500.0), torch.randn(1, 4, 4096))


def test_t_wrong_type(t2v):
    with pytest.raises(TypeError, match="t must be a tensor"):
        t2v(torch.randn(1, 16, 2, 4, 4), [500.0], torch.randn(1, 4, 4096))


def test_x_not_5d(t2v):
    with pytest.raises(ValueError, match=r"x must be a latent video \[B, C, F, H, W\].*x\[None\]"):
        t2v(torch.randn(16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 4, 4096))


def test_clip_features_for_the_wrong_model(t2v):
    with pytest.raises(ValueError, match="no image branch"):
        t2v(torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 4, 4096),
            torch.randn(1, 257, 1280))
    i2v = WanDiT(get_preset("tiny-i2v"))
    with pytest.raises(ValueError, match="needs clip_fea"):
        i2v(torch.randn(1, 36, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 4, 4096))
    with pytest.raises(ValueError, match=r"clip_fea must be \[B=1, tokens, 1280\]"):
        i2v(torch.randn(1, 36, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 4, 4096),
            torch.randn(1, 257, 1024))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "v2v"}, "model_type must be one of"),
    ({"dim": 64, "num_heads": 3}, "does not split into 3 heads"),
    ({"dim": 64, "num_heads": 16}, "head dim 4"),
    ({"model_type": "ti2v", "in_dim": 48, "out_dim": 16}, "must equal out_dim"),
    ({"model_type": "i2v", "in_dim": 16}, "must exceed out_dim"),
    ({"patch_size": (1, 0, 2)}, "patch_size"),
    ({"num_layers": 0}, "num_layers must be positive"),
])
def test_config_rejects_impossible_combinations(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_preset("tiny-t2v"), **change)


def test_unknown_compute_dtype_is_refused():
    with pytest.raises(ValueError, match="fp8 is a storage format"):
        WanDiT(get_preset("tiny-t2v"), device="meta", compute_dtype=torch.float8_e4m3fn)


def test_x_integer_dtype(t2v):
    with pytest.raises(TypeError, match="floating-point latent"):
        t2v(torch.zeros(1, 16, 2, 4, 4, dtype=torch.int64), torch.tensor([500.0]),
            torch.randn(1, 4, 4096))


def test_gradients_reach_every_parameter():
    # Training builds on this model: every parameter must get a gradient (per-token t included).
    cfg = get_preset("tiny-i2v")
    model = load_dit(random_state_dict(cfg, seed=4), num_heads=cfg.num_heads)
    x, context, clip = _inputs(cfg, dtype=torch.float32)
    t = torch.full((2, 18), 400.0)
    t[:, :6] = 0.0
    model(x, t, context, clip).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad


def test_cast_linear_applies_a_large_weight_in_slices_for_few_rows():
    # A few rows through a large low-precision weight: cast and applied slice by slice, same result.
    from core.dit import ops

    layer = ops.CastLinear(512, 3 * ops.CAST_SLICE_ELEMENTS // 512 + 7, dtype=torch.bfloat16)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 512)
    expected = x @ layer.weight.float().T + layer.bias.float()
    assert_close(layer(x), expected, rtol=1e-5, atol=1e-4)          # fp32 matmul, order differs


def test_ffn_over_token_slices_equals_all_at_once(model64, monkeypatch):
    from core.dit import block

    x, context, _ = _inputs(model64.config)
    t = torch.tensor([800.0, 123.5], dtype=torch.float64)
    whole = model64(x, t, context)
    monkeypatch.setattr(block, "FFN_SLICE_ELEMENTS", 5 * model64.config.ffn_dim * 2)  # 5 tokens
    assert_close(model64(x, t, context), whole, **F64)
