"""The model files behind the Wan2.2 A14B templates: detection of the two expert kinds (I2V-A14B:
36 input channels and no CLIP branch), the head-count rule (dim / 128 unless the file's metadata
says otherwise), `core info`, and ComfyUI's fp8_scaled files in both key layouts.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from core.checkpoint import read_state_dict
from core.dit import PRESETS, detect_config, get_preset, load_dit, save_dit
from core.dit.config import DiTConfig, dit_metadata
from core.dit.random_weights import random_state_dict, write_random_dit
from core.dit.scaled_fp8 import ScaledFP8Linear, quantize, save_scaled_fp8

torch.set_num_threads(1)
TINY_A14B = get_preset("tiny-i2v-a14b")


def _forward(model, seed=0, clip=False):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 4, 4, generator=gen)
    context = torch.randn(1, 3, cfg.text_dim, generator=gen)
    clip_fea = torch.randn(1, 16, cfg.image_dim, generator=gen) if clip else None
    with torch.no_grad():
        return model(x, torch.tensor([321.0]), context, clip_fea)


# --- detection --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b"])
def test_a14b_presets_are_detected_from_meta_tensors(name):
    assert detect_config(random_state_dict(PRESETS[name], device="meta")) == PRESETS[name]


@pytest.mark.parametrize("in_dim, out_dim, image, expected", [
    (36, 16, True, ("i2v", True)),      # Wan2.1 I2V: CLIP branch
    (36, 16, False, ("i2v", False)),    # Wan2.2 I2V-A14B expert: 16 noise + 4 mask + 16 image
    (16, 16, False, ("t2v", False)),    # T2V (Wan2.1 14B / Wan2.2 T2V-A14B expert)
    (48, 48, False, ("ti2v", False)),   # Wan2.2 TI2V-5B
    (32, 16, False, ("t2v", False)),    # not 2·out + 4: no image channels assumed
    (20, 16, False, ("t2v", False)),
])
def test_channel_layout_boundaries(in_dim, out_dim, image, expected):
    cfg = DiTConfig("i2v" if image else "t2v", in_dim=in_dim, out_dim=out_dim, dim=256, ffn_dim=64,
                    num_heads=2, num_layers=1)
    got = detect_config(random_state_dict(cfg, device="meta"))
    assert (got.model_type, got.has_image_branch) == expected


def test_t2v_a14b_has_wan21_14b_shapes_and_i2v_a14b_lacks_only_the_clip_branch():
    assert PRESETS["wan2.2-t2v-a14b"] == PRESETS["wan2.1-t2v-14b"]
    i2v21 = set(random_state_dict(PRESETS["wan2.1-i2v-14b"], device="meta"))
    i2v22 = set(random_state_dict(PRESETS["wan2.2-i2v-a14b"], device="meta"))
    assert i2v22 < i2v21
    assert all(k.startswith("img_emb.") or ".k_img." in k or ".v_img." in k or "norm_k_img" in k
               for k in i2v21 - i2v22)


def test_i2v_a14b_model_has_no_image_branch_and_runs_without_clip():
    model = load_dit(random_state_dict(TINY_A14B, seed=2), num_heads=2)
    names = set(model.state_dict())
    assert not any(k.startswith("img_emb") or "k_img" in k or "v_img" in k for k in names)
    assert _forward(model).shape == (1, 16, 2, 4, 4)
    with pytest.raises(ValueError, match="no image branch"):
        _forward(model, clip=True)


def test_cli_info_names_the_variant_and_the_expert_role(tmp_path, capsys):
    from core.cli import main

    path = write_random_dit(TINY_A14B, tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                            fp8_scaled="old", prefix="model.diffusion_model.")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "i2v (no CLIP branch): dim 64, 2 layers, 2 heads" in out
    assert "high-noise or the low-noise expert" in out and "fp8_scaled" in out
    from core.checkpoint import describe_state_dict

    text = describe_state_dict(random_state_dict(PRESETS["wan2.2-i2v-a14b"], device="meta"))
    assert "Wan2.2 I2V-A14B expert" in text and "high-noise or the low-noise" in text
    text = describe_state_dict(random_state_dict(PRESETS["wan2.2-t2v-a14b"], device="meta"))
    assert "T2V-A14B expert" in text and "Wan2.1 T2V-14B" in text


# --- head count -------------------------------------------------------------------------------

def test_head_count_is_dim_over_128_without_metadata(tmp_path):
    # 32-wide heads at width 256: a file made elsewhere (no metadata) is read as ComfyUI and the
    # official code read it, dim / 128 = 2 heads; the pack's own file says 8.
    cfg = DiTConfig("t2v", dim=256, ffn_dim=64, num_heads=8, num_layers=1)
    sd = random_state_dict(cfg, seed=1)
    save_file(sd, str(tmp_path / "elsewhere.safetensors"))
    save_dit(sd, tmp_path / "ours.safetensors", config=cfg)
    assert load_dit(tmp_path / "elsewhere.safetensors").config.num_heads == 2
    assert load_dit(tmp_path / "ours.safetensors").config == cfg


def test_head_count_metadata_round_trip_through_a_model(tmp_path):
    model = load_dit(random_state_dict(TINY_A14B, seed=3), num_heads=2)
    path = save_dit(model, tmp_path / "m.safetensors")
    again = load_dit(path)
    assert again.config == TINY_A14B
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


def test_narrow_width_without_metadata_is_a_clear_error(tmp_path):
    save_file(random_state_dict(TINY_A14B), str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ValueError, match=r"width 64 is not a multiple of 128.*num_heads"):
        load_dit(tmp_path / "narrow.safetensors")
    with pytest.raises(ValueError, match="not a multiple of 128"):
        load_dit(random_state_dict(TINY_A14B))
    save_file(random_state_dict(TINY_A14B), str(tmp_path / "bad.safetensors"),
              metadata={"num_heads": "two"})
    with pytest.raises(ValueError, match="num_heads = 'two'"):
        load_dit(tmp_path / "bad.safetensors")


# --- fp8_scaled -------------------------------------------------------------------------------

def _dequantised_reference(path):
    """The file's real weights computed here by hand (W_fp8.float() * scale), as plain fp32."""
    sd = read_state_dict(path)
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    out = {}
    for key, value in sd.items():
        layer = key[: -len(".weight")]
        scale = sd.get(f"{layer}.scale_weight", sd.get(f"{layer}.weight_scale"))
        if key.endswith(".weight") and scale is not None:
            out[key] = value.float() * scale.float().reshape(-1, 1)
        elif not key.endswith(("scale_weight", "weight_scale", "scale_input", "input_scale",
                               "comfy_quant", "scaled_fp8")):
            out[key] = value.float()
    return out


LAYOUT_CASES = [("old", {}), ("new", {}), ("new", {"quant_in_metadata": True}),
                ("old", {"per_row": True}), ("new", {"input_scale": True})]


@pytest.mark.parametrize("layout, options", LAYOUT_CASES,
                         ids=["old", "new", "new-header", "old-per-row", "new-input-scale"])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bare", "prefixed"])
def test_fp8_scaled_round_trip_equals_the_dequantised_reference(tmp_path, layout, options, prefix):
    path = write_random_dit(TINY_A14B, tmp_path / "expert.safetensors", seed=4, fp8_scaled=layout,
                            prefix=prefix, **options)
    model = load_dit(path, dtype=torch.float32)
    scaled = [m for m in model.modules() if isinstance(m, ScaledFP8Linear)]
    assert len(scaled) == TINY_A14B.num_layers * 10                    # q k v o x2, ffn x2
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in scaled)  # fp8 stays fp8 in memory
    reference = load_dit(_dequantised_reference(path), dtype=torch.float32, num_heads=2)
    # Same real weights (W_fp8 -> fp32 is exact, one fp32 multiply by the scale in both), built
    # separately: only summation order inside the kernels may differ, as in test_dit_loading.
    torch.testing.assert_close(_forward(model), _forward(reference), rtol=1e-5, atol=1e-6)


def test_writer_quantises_within_half_an_fp8_step(tmp_path):
    sd = random_state_dict(TINY_A14B, seed=5)
    path = save_scaled_fp8(sd, tmp_path / "w.safetensors", "new", metadata=dit_metadata(TINY_A14B))
    deq = _dequantised_reference(path)
    for key in ("blocks.0.self_attn.q.weight", "blocks.1.ffn.2.weight"):
        w = sd[key]
        # e4m3: 3 mantissa bits -> relative half-step 2^-4; below the normal range (2^-6 * scale)
        # the absolute step is 2^-9 * scale.
        scale = w.abs().max() / 448
        bound = w.abs() * 2 ** -4 + scale * 2 ** -10 + 1e-12
        assert ((deq[key] - w).abs() <= bound).all(), key


def test_weight_dtype_bf16_dequantises_a_scaled_file_once(tmp_path):
    path = write_random_dit(TINY_A14B, tmp_path / "e.safetensors", seed=6, fp8_scaled="new")
    model = load_dit(path, dtype=torch.float32, weight_dtype="fp32")
    assert not any(isinstance(m, ScaledFP8Linear) for m in model.modules())
    reference = load_dit(_dequantised_reference(path), dtype=torch.float32, num_heads=2)
    torch.testing.assert_close(_forward(model), _forward(reference), rtol=1e-5, atol=1e-6)


def _rewrite(path, drop=(), metadata=None):
    from core.checkpoint import read_metadata

    sd = {k: v for k, v in read_state_dict(path).items() if k not in drop}
    save_file(sd, str(path), metadata=metadata if metadata is not None else read_metadata(path))
    return path


@pytest.mark.parametrize("layout, key", [("old", "blocks.1.self_attn.k.scale_weight"),
                                         ("new", "blocks.1.self_attn.k.weight_scale")])
def test_missing_scale_is_a_clear_error(tmp_path, layout, key):
    path = write_random_dit(TINY_A14B, tmp_path / "e.safetensors", fp8_scaled=layout)
    _rewrite(path, drop=[key])
    with pytest.raises(ValueError, match=r"no scale for 1 fp8 layer.*blocks.1.self_attn.k.*"
                                         r"download it again"):
        load_dit(path)


def test_missing_scale_with_header_quant_metadata_is_a_clear_error(tmp_path):
    path = write_random_dit(TINY_A14B, tmp_path / "e.safetensors", fp8_scaled="new",
                            quant_in_metadata=True)
    _rewrite(path, drop=["blocks.0.ffn.0.weight_scale"])
    with pytest.raises(ValueError, match="no scale for 1 fp8 layer.*blocks.0.ffn.0"):
        load_dit(path)


def test_unsupported_quant_format_is_named(tmp_path):
    path = write_random_dit(TINY_A14B, tmp_path / "e.safetensors", fp8_scaled="new")
    sd = read_state_dict(path)
    sd["blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()),
                                                    dtype=torch.uint8)
    save_file(sd, str(path), metadata=dit_metadata(TINY_A14B))
    with pytest.raises(ValueError, match=r"\['nvfp4'\].*does not run"):
        load_dit(path)


def test_dequantised_forward_never_upcasts_a_whole_wide_weight_for_few_rows():
    layer = ScaledFP8Linear(64, 1 << 17, bias=True)          # 8M weights > the 4M-element slice
    w = torch.randn(1 << 17, 64) * 0.1
    q, scale = quantize(w)
    layer.weight = torch.nn.Parameter(q, requires_grad=False)
    layer.weight_scale = scale
    layer.bias = torch.nn.Parameter(torch.zeros(1 << 17))
    x = torch.randn(2, 64)
    expected = x @ (q.float() * scale).t()
    # Slices vs one matmul: different blocking of the same fp32 dot products of length 64.
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scaled_mm_matches_the_dequantised_matmul_on_fp8_gpus():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("torch._scaled_mm needs compute capability 8.9 or newer")
    layer = ScaledFP8Linear(256, 512, bias=True, device="cuda")
    q, scale = quantize(torch.randn(512, 256, device="cuda") * 0.05)
    layer.weight = torch.nn.Parameter(q, requires_grad=False)
    layer.weight_scale = scale
    layer.bias = torch.nn.Parameter(torch.randn(512, device="cuda") * 0.1)
    x = torch.randn(3, 32, 256, device="cuda", dtype=torch.bfloat16)        # 96 rows: 16 | 96
    layer.use_scaled_mm = True
    got = layer(x)
    layer.use_scaled_mm = False
    # The reference sees the same fp8-rounded input the fp8 matmul gets (input scale 1), in fp32;
    # left: fp32 accumulation order and the bf16 output rounding (2^-8 relative).
    xq = x.float().clamp(-448, 448).to(torch.float8_e4m3fn).float()
    expected = xq @ (q.float() * scale).t() + layer.bias.float()
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    assert not torch.equal(got, layer(x))  # the flag really switched the kernel
