"""Loading DiT checkpoints: official and ComfyUI-prefixed key layouts in .safetensors and .pth,
configuration detection (the released Wan DiTs, as meta tensors), dtype policy, and the
errors for files that are not a usable DiT checkpoint.

The tiny presets have 32-wide heads, which no key records: their files carry `num_heads` in the
safetensors metadata (as every DiT file this pack writes), and state dicts in memory or .pth files
pass `num_heads=` (the head-count rule itself is tested in test_dit_a14b_files.py).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.checkpoint import read_state_dict
from core.dit import PRESETS, detect_config, get_preset, load_dit
from core.dit.random_weights import random_state_dict

REAL_PRESETS = ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b", "wan2.2-ti2v-5b",
                "wan2.2-t2v-a14b", "wan2.2-i2v-a14b"]
TINY_PRESETS = ["tiny-t2v", "tiny-i2v", "tiny-i2v-a14b", "tiny-ti2v"]
TINY_HEADS = 2  # every tiny preset: width 64 in 32-wide heads


def _forward(model, seed=0):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 4, 4, generator=gen)
    context = torch.randn(1, 3, cfg.text_dim, generator=gen)
    clip = torch.randn(1, 16, cfg.image_dim, generator=gen) if cfg.has_image_branch else None
    with torch.no_grad():
        return model(x, torch.tensor([321.0]), context, clip)


def _save(sd, path, heads=TINY_HEADS):
    """A file as this pack writes it: safetensors with the head count in its metadata (None: a
    file made elsewhere, without); .pth files have no metadata."""
    if path.suffix == ".safetensors":
        save_file(sd, str(path), metadata=None if heads is None else {"num_heads": str(heads)})
    else:
        torch.save(sd, str(path))
    return path


# --- detection --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", REAL_PRESETS + TINY_PRESETS)
def test_detects_each_preset_from_meta_tensors(name):
    sd = random_state_dict(PRESETS[name], device="meta")               # shapes only: 14B is free
    heads = PRESETS[name].num_heads if name.startswith("tiny") else None
    assert detect_config(sd, num_heads=heads) == PRESETS[name]


def test_detected_variants_of_the_real_checkpoints():
    got = {n: detect_config(random_state_dict(PRESETS[n], device="meta")) for n in REAL_PRESETS}
    assert [(c.model_type, c.dim, c.num_layers, c.num_heads, c.in_dim, c.out_dim)
            for c in got.values()] == [("t2v", 1536, 30, 12, 16, 16), ("t2v", 5120, 40, 40, 16, 16),
                                       ("i2v", 5120, 40, 40, 36, 16), ("ti2v", 3072, 30, 24, 48, 48),
                                       ("t2v", 5120, 40, 40, 16, 16), ("i2v", 5120, 40, 40, 36, 16)]
    assert [c.has_image_branch for c in got.values()] == [False, False, True, False, False, False]


def test_detects_from_a_file_header_without_reading_weights(tmp_path):
    path = _save(random_state_dict(get_preset("tiny-i2v")), tmp_path / "m.safetensors")
    sd = read_state_dict(path, device="meta")
    assert all(v.is_meta for v in sd.values())
    assert detect_config(sd, num_heads=TINY_HEADS) == get_preset("tiny-i2v")


# --- round trips ------------------------------------------------------------------------------

# Every variant in the official layout; the ComfyUI-prefixed layouts with one variant.
LAYOUTS = ([(p, "") for p in TINY_PRESETS]
           + [("tiny-t2v", "model.diffusion_model."), ("tiny-ti2v", "model.")])


@pytest.mark.parametrize("preset, prefix", LAYOUTS)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_random_weights_load_back_strictly_with_identical_output(tmp_path, preset, prefix, suffix):
    sd = random_state_dict(get_preset(preset), seed=5)
    reference = _forward(load_dit(sd, num_heads=TINY_HEADS))
    path = _save({prefix + k: v for k, v in sd.items()}, tmp_path / f"dit{suffix}")
    model = load_dit(path, num_heads=None if suffix == ".safetensors" else TINY_HEADS)
    assert model.config == get_preset(preset)
    loaded = model.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    # Same weights, separately built model: the file's tensors may sit at other memory alignments
    # (safetensors is memory-mapped), which picks other SIMD kernels, so fp32 sums may round
    # differently. Two fp32 blocks of width 64 keep that well under 1e-5 relative.
    torch.testing.assert_close(_forward(model), reference, rtol=1e-5, atol=1e-6)


def test_whole_pipeline_file_keeps_only_the_dit(tmp_path):
    sd = random_state_dict(get_preset("tiny-t2v"))
    bundle = {"model.diffusion_model." + k: v for k, v in sd.items()}
    bundle["first_stage_model.decoder.conv_in.weight"] = torch.zeros(3, 3)
    model = load_dit(_save(bundle, tmp_path / "all_in_one.safetensors"))
    assert model.config == get_preset("tiny-t2v")


def test_state_dict_is_loaded_in_place_without_a_second_copy():
    sd = random_state_dict(get_preset("tiny-t2v"))
    model = load_dit(sd, num_heads=TINY_HEADS)
    key = "blocks.1.ffn.0.weight"
    assert model.get_parameter(key).data_ptr() == sd[key].data_ptr()


def test_bf16_checkpoint_is_not_upcast():
    sd = random_state_dict(get_preset("tiny-t2v"), dtype=torch.bfloat16)
    model = load_dit(sd, dtype=torch.float32, num_heads=TINY_HEADS)     # fp32 compute, bf16 storage
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.compute_dtype == torch.float32
    assert _forward(model).dtype == torch.float32
    assert load_dit(sd, num_heads=TINY_HEADS).compute_dtype == torch.bfloat16  # default: as stored


def test_fp8_checkpoint_defaults_to_bf16_compute_and_stays_fp8():
    sd = random_state_dict(get_preset("tiny-t2v"))
    sd = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in sd.items()}
    model = load_dit(sd, weight_dtype=None, num_heads=TINY_HEADS)
    assert model.compute_dtype == torch.bfloat16
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert torch.isfinite(_forward(model)).all()


def test_dtype_names_are_accepted():
    model = load_dit(random_state_dict(get_preset("tiny-t2v")), dtype="bf16", weight_dtype="fp8_e5m2",
                     num_heads=TINY_HEADS)
    assert model.compute_dtype == torch.bfloat16
    assert model.blocks[0].ffn[2].weight.dtype == torch.float8_e5m2
    with pytest.raises(ValueError, match="unknown dtype 'fp12'"):
        load_dit(random_state_dict(get_preset("tiny-t2v")), dtype="fp12", num_heads=TINY_HEADS)


# --- bad files --------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(tmp_path, suffix):
    path = _save(random_state_dict(get_preset("tiny-t2v")), tmp_path / f"dit{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_dit(path)


@pytest.mark.parametrize("name", ["notes.safetensors", "notes.pth"])
def test_non_checkpoint_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("these are not weights\n" * 20)
    with pytest.raises(ValueError, match="not a readable"):
        load_dit(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "dit.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="unsupported checkpoint format '.gguf'"):
        load_dit(path)


def test_keys_of_another_model(tmp_path):
    vae_like = {"encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3),
                "decoder.head.2.weight": torch.zeros(3, 96, 3, 3, 3),
                "conv1.weight": torch.zeros(32, 32, 1, 1, 1)}
    path = _save(vae_like, tmp_path / "vae.safetensors")
    with pytest.raises(ValueError, match=r"not a Wan DiT state dict: expected keys such as "
                                         r"patch_embedding.weight.*found keys: conv1.weight"):
        load_dit(path)


def test_unsupported_wan_variant_is_named():
    sd = random_state_dict(get_preset("tiny-t2v"))
    sd["vace_blocks.0.modulation"] = torch.zeros(1, 6, 64)
    with pytest.raises(ValueError, match=r"unexpected 1 \(vace_blocks.0.modulation\).*VACE"):
        load_dit(sd, num_heads=TINY_HEADS)


def test_incomplete_checkpoint_is_reported_briefly():
    sd = random_state_dict(get_preset("tiny-t2v"))
    del sd["blocks.1.cross_attn.k.weight"], sd["blocks.0.norm3.bias"]
    with pytest.raises(ValueError, match=r"missing 2 \(blocks.0.norm3.bias, "
                                         r"blocks.1.cross_attn.k.weight\).*download it again"):
        load_dit(sd, num_heads=TINY_HEADS)


def test_wrong_tensor_shape_is_reported():
    sd = random_state_dict(get_preset("tiny-t2v"))
    sd["blocks.1.ffn.2.weight"] = torch.zeros(64, 100)
    with pytest.raises(ValueError, match="size mismatch for blocks.1.ffn.2.weight"):
        load_dit(sd, num_heads=TINY_HEADS)


class _Payload:
    """Unpickling this would call open(marker, 'w'), creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned.txt"
    sd = random_state_dict(get_preset("tiny-t2v"))
    sd["evil"] = _Payload(marker)
    path = tmp_path / "dit.pth"
    torch.save(sd, str(path))
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused to load.*weights_only=True"):
        load_dit(path)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_dit(tmp_path / "nope.safetensors")


def test_detection_ignores_a_repackaging_prefix():
    sd = random_state_dict(get_preset("tiny-ti2v"), device="meta")
    prefixed = {"model.diffusion_model." + k: v for k, v in sd.items()}
    assert detect_config(prefixed, num_heads=TINY_HEADS) == get_preset("tiny-ti2v")


def test_cli_info_describes_a_dit_file(tmp_path, capsys):
    from core.cli import main

    sd = random_state_dict(get_preset("tiny-i2v"))
    path = _save({"model.diffusion_model." + k: v for k, v in sd.items()}, tmp_path / "d.safetensors")
    assert main(["info", str(path)]) == 0
    assert "DiT: Wan DiT i2v: dim 64, 2 layers, 2 heads" in capsys.readouterr().out
