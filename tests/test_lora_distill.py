"""4-step distill LoRAs (Wan2.2-Lightning / LightX2V layouts) on A14B experts, plain and fp8_scaled:
the patched weights against independent math, strength 0, LoRAs for another architecture. With
COMFYUI_PATH set, ComfyUI's own LoRA loader patches the same weights (see test_a14b_comfy_parity.py).
"""
from __future__ import annotations

import logging

import pytest
import torch

from core.dit import get_preset, load_dit
from core.dit.random_weights import random_distill_lora, random_state_dict, write_random_dit
from core.dit.scaled_fp8 import ScaledFP8Linear
from core.train.lora import load_lora

torch.set_num_threads(1)
CFG = get_preset("tiny-i2v-a14b")
RANK = 4


def _expert():
    return load_dit(random_state_dict(CFG, seed=1), dtype=torch.float32, num_heads=CFG.num_heads)


def _velocity(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, CFG.in_dim, 2, 4, 4, generator=gen)
    context = torch.randn(1, 3, CFG.text_dim, generator=gen)
    with torch.no_grad():
        return model(x, torch.tensor([875.0]), context)


def _expected(base: dict, lora: dict, strength: float) -> dict:
    """W + strength·alpha/rank·up@down (+ diff), bias + strength·diff_b, written out by hand."""
    out = {k: v.clone() for k, v in base.items()}
    for key, value in lora.items():
        stem = key.removeprefix("diffusion_model.")
        if key.endswith(".lora_up.weight"):
            name = stem.removesuffix(".lora_up.weight")
            down = lora[key.replace("lora_up", "lora_down")]
            alpha = float(lora[key.replace(".lora_up.weight", ".alpha")])
            out[name + ".weight"] += strength * alpha / down.shape[0] * (value @ down)
        elif key.endswith(".diff_b"):
            out[stem.removesuffix(".diff_b") + ".bias"] += strength * value
        elif key.endswith(".diff"):
            name = stem.removesuffix(".diff")
            out[name if name in out else name + ".weight"] += strength * value
    return out


def _lora(layout):
    lora = random_distill_lora(CFG, rank=RANK, seed=7, layout=layout)
    if layout == "lightx2v":  # a diff on a bare parameter, as ComfyUI's key map allows
        lora["diffusion_model.blocks.1.modulation.diff"] = 0.05 * torch.randn(1, 6, CFG.dim)
    return lora


@pytest.mark.parametrize("layout", ["lightning", "lightx2v"])
def test_merge_patches_exactly_the_expected_weights(layout):
    model = _expert()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = _lora(layout)
    report = load_lora(model, lora, strength=1.5, mode="merge")
    expected = _expected(base, lora, 1.5)
    changed = 0
    for key, value in model.state_dict().items():
        # fp32 both ways; only the grouping of the scalar factors differs (a few ulp).
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7, msg=key)
        changed += not torch.equal(value, base[key])
    per_block = 10 if layout == "lightning" else 10 + 10 + 6 + 1   # weights, biases, norms, modulation
    assert changed == CFG.num_layers * per_block - (1 if layout == "lightx2v" else 0)
    # LightX2V's per-block `diff_m` is not applied (ComfyUI does not either): reported as ignored.
    assert list(report.ignored) == ([f"diffusion_model.blocks.{i}.diff_m" for i in range(CFG.num_layers)]
                                    if layout == "lightx2v" else [])
    assert report.rank == RANK


@pytest.mark.parametrize("layout", ["lightning", "lightx2v"])
def test_runtime_adapters_give_the_merged_velocity_and_leave_shared_tensors(layout):
    lora = _lora(layout)
    merged = _expert()
    load_lora(merged, lora, strength=0.8, mode="merge")
    runtime = _expert()
    before = {k: v.clone() for k, v in runtime.state_dict().items()}
    original = dict(runtime.state_dict())
    load_lora(runtime, lora, strength=0.8, mode="runtime")
    # W x + s·(alpha/r)·up(down x) vs (W + s·(alpha/r)·up@down) x: the same sum, grouped otherwise.
    torch.testing.assert_close(_velocity(runtime), _velocity(merged), rtol=1e-4, atol=1e-5)
    for key, tensor in original.items():  # diffs went into new tensors, the old ones are intact
        assert torch.equal(tensor, before[key]), key


@pytest.mark.parametrize("mode", ["merge", "runtime"])
@pytest.mark.parametrize("fp8", [False, True], ids=["plain", "fp8_scaled"])
def test_strength_zero_is_bit_identical(tmp_path, mode, fp8):
    model = (load_dit(write_random_dit(CFG, tmp_path / "e.safetensors", seed=1, fp8_scaled="new"),
                      dtype=torch.float32) if fp8 else _expert())
    reference = _velocity(model)
    load_lora(model, _lora("lightx2v"), strength=0.0, mode=mode)
    assert torch.equal(_velocity(model), reference)


def _fp8_step(values, scale):
    """One e4m3 step at each real value: 2^(exponent - 3) in units of the scale, at least the
    subnormal step 2^-9."""
    x = (values / scale).abs().clamp_min(2.0 ** -6)
    return torch.exp2(torch.floor(torch.log2(x)) - 3) * scale


@pytest.mark.parametrize("mode", ["merge", "runtime"])
def test_fp8_scaled_expert_is_patched_in_fp8(tmp_path, mode):
    path = write_random_dit(CFG, tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                            seed=1, fp8_scaled="old")
    model = load_dit(path, dtype=torch.float32)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ScaledFP8Linear)}
    real = {n: m.dequantized() for n, m in layers.items()}
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    lora = _lora("lightning")
    load_lora(model, lora, strength=3.0, mode=mode)       # LightX2V users run 3.0 on the high expert
    expected = _expected({n + ".weight": w for n, w in real.items()}, lora, 3.0)
    for name, layer in layers.items():
        assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.ndim == 0
        if mode == "runtime":   # base untouched, the adapter carries the delta
            assert torch.equal(layer.dequantized(), real[name])
            continue
        got, want = layer.dequantized(), expected[name + ".weight"]
        assert not torch.equal(got, real[name])
        # Quantised back with the layer's scale: each element within one fp8 step of W + delta
        # (stochastic rounding picks one of the two neighbours) ...
        step = _fp8_step(want, layer.weight_scale)
        assert ((got - want).abs() <= step * 1.0001).all(), name
        # ... and unbiased: the mean error is far below one step (it would be ~step/4 if rounding
        # dropped the delta; 4096+ elements give a standard error of ~step/130).
        assert ((got - want) / step).mean().abs() < 0.05, name
    if mode == "merge":
        assert sum(t.numel() * t.element_size() for t in model.state_dict().values()) == nbytes
        # Reproducible: the rounding is seeded by the layer's name, not drawn from global state.
        again = load_dit(path, dtype=torch.float32)
        torch.manual_seed(123)
        load_lora(again, lora, strength=3.0, mode=mode)
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in
                   zip(model.state_dict().values(), again.state_dict().values())
                   if a.dtype == torch.float8_e4m3fn)


def test_fp8_runtime_velocity_matches_a_merged_fp32_reference(tmp_path):
    path = write_random_dit(CFG, tmp_path / "e.safetensors", seed=1, fp8_scaled="new")
    model = load_dit(path, dtype=torch.float32)
    plain = {k: v for k, v in model.state_dict().items() if not k.endswith("weight_scale")}
    for name, m in model.named_modules():
        if isinstance(m, ScaledFP8Linear):
            plain[name + ".weight"] = m.dequantized()
    reference = load_dit(plain, dtype=torch.float32, num_heads=CFG.num_heads)
    lora = _lora("lightx2v")
    load_lora(model, lora, strength=1.0, mode="runtime")
    load_lora(reference, lora, strength=1.0, mode="merge")
    # Runtime branch (fp32) vs merged fp32 weights: grouping of the same sums only.
    torch.testing.assert_close(_velocity(model), _velocity(reference), rtol=1e-4, atol=1e-5)


def test_lora_for_another_architecture_is_an_error_naming_keys():
    flux_like = {f"diffusion_model.double_blocks.{i}.img_attn.qkv.lora_{d}.weight": torch.zeros(4, 4)
                 for i in range(3) for d in ("down", "up")}
    with pytest.raises(ValueError, match=r"0 of the 6 keys .*double_blocks\.0\.img_attn\.qkv"
                                         r".*another model family"):
        load_lora(_expert(), flux_like)


def test_partial_match_reports_and_logs_what_was_ignored(caplog):
    lora = _lora("lightning")
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.zeros(4, 64)
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] = torch.zeros(64, 4)
    with caplog.at_level(logging.WARNING):
        report = load_lora(_expert(), lora, strength=1.0)
    assert report.ignored == ("diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight",
                              "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight")
    assert "2 of 62 keys match nothing" in caplog.text and "k_img" in caplog.text


def test_lora_of_another_size_is_refused():
    wide = get_preset("tiny-i2v-a14b", dim=96, num_heads=3)
    with pytest.raises(ValueError, match="another size"):
        load_lora(_expert(), random_distill_lora(wide, rank=RANK))


def test_the_lora_node_path_refuses_a_foreign_lora(pack, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "flux_lora.safetensors"
    save_file({"transformer.single_blocks.0.linear1.lora_A.weight": torch.zeros(4, 8),
               "transformer.single_blocks.0.linear1.lora_B.weight": torch.zeros(8, 4)}, str(path))
    hosted = pack.nodes.host.HostedModel(_expert())
    with pytest.raises(ValueError, match=r"flux_lora.safetensors: 0 of the 2 keys.*single_blocks"):
        hosted.with_lora(path, 1.0)
