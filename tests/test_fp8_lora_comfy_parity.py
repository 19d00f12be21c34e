"""Wan2.2 A14B model files against ComfyUI itself (COMFYUI_PATH; skipped otherwise), fp32, random
weights, width 1024 so the head count (dim / 128 = 8) is what both sides assume with no metadata:

- our forward == ComfyUI's WanModel for an I2V-A14B-shaped expert (36 channels, no CLIP branch),
  both built from the same file by their own loaders (`comfy.sd.load_diffusion_model`);
- the same for fp8_scaled files in both of ComfyUI's key layouts;
- a Lightning / LightX2V distill LoRA through ComfyUI's LoRA loader patches the same weights as
  ours, on a plain and on an fp8_scaled expert (there: both re-quantise, so within fp8 steps);
  and through the pack's own LoRA node path (ComfyUI's patches on our fp8 layers' hooks).

Run with ComfyUI's Python:
  COMFYUI_PATH=/opt/comfyui /opt/comfyui/venv/bin/python -m pytest -q tests/test_a14b_comfy_parity.py
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.dit import load_dit
from core.dit.config import DiTConfig
from core.dit.random_weights import random_distill_lora, random_state_dict, write_random_dit
from core.dit.scaled_fp8 import ScaledFP8Linear
from core.train.lora import load_lora, parse_lora

pytestmark = pytest.mark.comfyui
# I2V-A14B shapes at width 1024 (8 heads of 128), two blocks: 36 = 16 noise + 4 mask + 16 image.
CFG = DiTConfig("i2v", in_dim=36, dim=1024, ffn_dim=2048, num_heads=8, num_layers=2,
                image_branch=False)
TOLERANCE = 1e-4      # max abs diff of the velocity, fp32 (as tests/test_dit_comfy_parity.py)
RANK = 8


@pytest.fixture(scope="module")
def comfy_sd(comfy):
    return comfy("comfy.sd")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, CFG.in_dim, 2, 4, 6, generator=g), torch.tensor([937.5]),
            torch.randn(1, 7, CFG.text_dim, generator=g))


def _max_diff(ours, theirs):
    x, t, context = _inputs()
    with torch.no_grad():
        a, b = ours(x, t, context), theirs(x, t, context)
    assert a.shape == b.shape == (1, CFG.out_dim, 2, 4, 6)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory):
    """A file as ComfyUI's repackaged experts are: fp32 here, keys prefixed, no metadata."""
    path = tmp_path_factory.mktemp("a14b") / "wan2.2_i2v_low_noise_14B_fp16.safetensors"
    sd = random_state_dict(CFG, seed=3)
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, str(path))
    return path


def test_i2v_a14b_expert_matches_comfyui(comfy_sd, plain_file):
    ours = load_dit(plain_file, dtype=torch.float32)
    assert ours.config == CFG                                   # 8 heads from dim / 128
    theirs = comfy_sd.load_diffusion_model(str(plain_file), {"dtype": torch.float32})
    assert theirs.model.diffusion_model.num_heads == CFG.num_heads
    assert getattr(theirs.model.diffusion_model, "img_emb", None) is None     # no CLIP branch there either
    diff = _max_diff(ours, theirs.model.diffusion_model)
    print(f"I2V-A14B expert (dim 1024, 2 layers): max abs diff vs ComfyUI {diff:.3g}")
    assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("layout, options", [("old", {}), ("new", {}),
                                             ("new", {"quant_in_metadata": True})],
                         ids=["old", "new", "new-header"])
def test_fp8_scaled_files_match_comfyuis_loader(comfy_sd, tmp_path, layout, options):
    path = write_random_dit(CFG, tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                            seed=4, fp8_scaled=layout, **options)
    ours = load_dit(path, dtype=torch.float32)
    assert sum(isinstance(m, ScaledFP8Linear) for m in ours.modules()) == CFG.num_layers * 10
    theirs = comfy_sd.load_diffusion_model(str(path)).model
    assert theirs.manual_cast_dtype == torch.float32             # CPU: both compute in fp32
    diff = _max_diff(ours, theirs.diffusion_model)
    print(f"fp8_scaled ({layout}{', header metadata' if options else ''}): max abs diff {diff:.3g}")
    assert diff <= TOLERANCE, diff


def _comfy_patched(comfy, patcher, lora, strength):
    """ComfyUI's own LoRA route (LoraLoaderModelOnly): key map, load_lora, add_patches, patch."""
    comfy_lora = comfy("comfy.lora")
    patches = comfy_lora.load_lora(lora, comfy_lora.model_lora_keys_unet(patcher.model, {}),
                                   log_missing=False)
    clone = patcher.clone()
    clone.add_patches(patches, strength)
    clone.patch_model()
    return clone, {k.removeprefix("diffusion_model."): k for k in patches}


def _real(value):
    """A ComfyUI weight as real values (its quantised tensors dequantise themselves)."""
    return value.dequantize().float() if hasattr(value, "dequantize") else value.float()


@pytest.mark.parametrize("layout", ["lightning", "lightx2v"])
def test_distill_lora_patches_the_same_weights_as_comfyui(comfy, comfy_sd, plain_file, layout):
    lora = random_distill_lora(CFG, rank=RANK, seed=9, layout=layout)
    patcher = comfy_sd.load_diffusion_model(str(plain_file), {"dtype": torch.float32})
    clone, patched = _comfy_patched(comfy, patcher, lora, 1.5)
    theirs = {k.removeprefix("diffusion_model."): v
              for k, v in clone.model.state_dict().items() if k.startswith("diffusion_model.")}
    ours = load_dit(plain_file, dtype=torch.float32)
    deltas, ignored = parse_lora(lora, ours)
    load_lora(ours, lora, strength=1.5, mode="merge")
    # The same parameters are patched: ComfyUI's patch keys == the parameters our parse targets.
    expected_keys = {n + ".weight" for n, d in deltas.items() if d.up is not None or d.diff is not None}
    expected_keys |= {n + ".bias" for n, d in deltas.items() if d.diff_b is not None}
    assert set(patched) == expected_keys
    assert all(k.endswith(".diff_m") for k in ignored)
    for key, value in ours.state_dict().items():
        # fp32 both: W + s·(alpha/r)·up@down with the scalars grouped differently.
        torch.testing.assert_close(value, theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    clone.unpatch_model()


def _step(values, scale):
    """One e4m3 step at each value under `scale` (subnormal step below 2^-6)."""
    x = (values / scale).abs().clamp_min(2.0 ** -6)
    return torch.exp2(torch.floor(torch.log2(x)) - 3) * scale


def test_distill_lora_on_fp8_scaled_experts_agrees_with_comfyui(comfy, comfy_sd, pack, tmp_path):
    if not pack.nodes.host.HAVE_COMFY:
        pytest.skip("the pack was imported before ComfyUI was on the path in this session")
    path = write_random_dit(CFG, tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                            seed=5, fp8_scaled="old")
    lora_path = tmp_path / "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
    lora = random_distill_lora(CFG, rank=RANK, seed=10, layout="lightning")
    save_file(lora, str(lora_path))
    strength = 1.0

    base = load_dit(path, dtype=torch.float32)
    exact = {n: m.dequantized() for n, m in base.named_modules() if isinstance(m, ScaledFP8Linear)}
    reference = load_dit(path, dtype=torch.float32)
    load_lora(reference, {k: v.clone() for k, v in lora.items()}, strength, mode="merge")
    for name, layer in reference.named_modules():
        if isinstance(layer, ScaledFP8Linear):
            up = lora[f"diffusion_model.{name}.lora_up.weight"]
            down = lora[f"diffusion_model.{name}.lora_down.weight"]
            alpha = float(lora[f"diffusion_model.{name}.alpha"])
            exact[name] = exact[name] + strength * alpha / RANK * (up @ down)

    # ComfyUI's loader and LoRA route on its own fp8 layers.
    clone, _ = _comfy_patched(comfy, comfy_sd.load_diffusion_model(str(path)), lora, strength)
    theirs = dict(clone.model.diffusion_model.named_modules())
    # The pack's node path inside ComfyUI: ComfyUI's patches through our layers' hooks.
    hosted = pack.nodes.host.HostedModel(base).with_lora(lora_path, strength)
    before = {n: m.weight.clone() for n, m in base.named_modules() if isinstance(m, ScaledFP8Linear)}
    hosted.patcher.patch_model()
    mine = dict(base.named_modules())
    for name, want in exact.items():
        ours = mine[name].dequantized()
        assert mine[name].weight.dtype == torch.float8_e4m3fn
        comfy_real = _real(theirs[name].weight)
        inside = want.abs() <= 448 * mine[name].weight_scale          # not clipped by a fixed scale
        step = _step(want, mine[name].weight_scale)
        # Each side re-quantises W + delta to fp8 (ComfyUI with a recalculated scale, ours with
        # the layer's scale): each is within one fp8 step of the exact patched weight, so they
        # are within two of each other; core merge (scale grown if needed) within one.
        assert ((ours - want).abs() <= step * 1.0001)[inside].all(), name
        assert ((comfy_real - want).abs() <= 2 * step * 1.0001 + 1e-6).all(), name
        assert ((reference.get_submodule(name).dequantized() - want).abs()
                <= _step(want, reference.get_submodule(name).weight_scale) * 1.0001).all(), name
    hosted.patcher.unpatch_model()
    for name, weight in before.items():                                # unpatching restores fp8
        assert torch.equal(mine[name].weight.view(torch.uint8), weight.view(torch.uint8)), name
    clone.unpatch_model()
