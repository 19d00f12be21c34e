"""Loading: official key layouts load strictly, configurations are detected (also for the full
published sizes, built as meta state dicts), foreign or damaged files give clear errors."""
import pytest
import torch
from safetensors.torch import save_file

from core.checkpoint import describe_state_dict
from core.vae import PRESETS, detect_config, load_vae
from core.vae.model import WanVAEModel, random_state_dict


def _meta_state_dict(cfg):
    with torch.device("meta"):
        return WanVAEModel(cfg).state_dict()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_detected_from_meta_state_dicts(name):
    cfg = PRESETS[name]
    assert detect_config(_meta_state_dict(cfg)) == cfg


def test_published_layouts():
    # Facts of the published checkpoints that the meta layouts must reproduce.
    sd21, sd22 = _meta_state_dict(PRESETS["wan2.1"]), _meta_state_dict(PRESETS["wan2.2"])
    assert sd21["encoder.conv1.weight"].shape == (96, 3, 3, 3, 3)
    assert sd21["decoder.upsamples.3.resample.1.weight"].shape == (192, 384, 3, 3)  # halves
    assert sd21["decoder.upsamples.3.time_conv.weight"].shape == (768, 384, 3, 1, 1)
    assert sd21["encoder.downsamples.5.time_conv.weight"].shape == (192, 192, 3, 1, 1)
    assert sd21["conv1.weight"].shape == (32, 32, 1, 1, 1)
    assert sd21["decoder.middle.1.norm.gamma"].shape == (384, 1, 1)
    assert len(sd21) == 194
    assert sd22["encoder.conv1.weight"].shape == (160, 12, 3, 3, 3)
    assert sd22["decoder.conv1.weight"].shape == (1024, 48, 3, 3, 3)
    assert sd22["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape == (2048, 1024, 3, 1, 1)
    assert sd22["decoder.head.2.weight"].shape == (12, 256, 3, 3, 3)
    assert "decoder.upsamples.0.upsamples.0.residual.2.weight" in sd22
    s21, s22 = PRESETS["wan2.1"], PRESETS["wan2.2"]
    assert (s21.spatial_stride, s21.temporal_stride, s21.z_dim) == (8, 4, 16)
    assert (s22.spatial_stride, s22.temporal_stride, s22.z_dim) == (16, 4, 48)


@pytest.mark.parametrize("name", ["test-2.1", "test-2.2"])
@pytest.mark.parametrize("fmt", ["safetensors", "pth", "prefixed"])
def test_random_weights_load_back_strictly(tmp_path, name, fmt):
    cfg = PRESETS[name]
    sd = random_state_dict(cfg, seed=4)
    reference = WanVAEModel(cfg).eval()
    reference.load_state_dict(sd, strict=True)
    if fmt == "safetensors":
        path = tmp_path / "vae.safetensors"
        save_file(sd, str(path))
    elif fmt == "pth":
        path = tmp_path / "vae.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "vae.safetensors"
        save_file({"model." + k: v for k, v in sd.items()},
                  str(path))
    vae = load_vae(path)
    assert vae.config == cfg and vae.dtype == torch.float32
    for key, value in vae.model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    s = cfg.spatial_stride
    video = torch.rand(1, 3, 5, 2 * s, 2 * s) * 2 - 1
    z = vae.encode_raw(video)
    # Separately built models on equal weights: memory-mapped tensors may take other SIMD kernels,
    # so fp32 results may differ in rounding only (a wrong key or layout would differ by O(1)).
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, reference.encode_stream(video), **tol)
    torch.testing.assert_close(vae.decode_raw(z), reference.decode_stream(z).clamp(-1, 1), **tol)


def test_public_attributes_and_dtype():
    vae = load_vae(random_state_dict(PRESETS["test-2.2"]), dtype=torch.bfloat16)
    assert (vae.latent_channels, vae.spatial_stride, vae.temporal_stride) == (48, 16, 4)
    assert vae.dtype == torch.bfloat16 and vae.latent_format.name == "wan2.2"
    z = vae.encode(torch.zeros(1, 3, 1, 16, 16))
    assert z.dtype == torch.float32 and z.shape == (1, 48, 1, 1, 1)


def test_foreign_state_dicts_are_refused():
    with pytest.raises(ValueError, match="expected a Wan VAE"):
        detect_config({"blocks.0.self_attn.q.weight": torch.empty(4, 4, device="meta")})
    with pytest.raises(ValueError, match="not a Wan VAE checkpoint"):
        load_vae({"weight": torch.zeros(3)})
    sd = random_state_dict(PRESETS["test-2.1"])
    truncated = {k: v for k, v in sd.items() if not k.startswith("decoder.upsamples.9")}
    with pytest.raises(ValueError, match="missing"):
        load_vae(truncated)
    wrong_shape = dict(sd, **{"conv2.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match="does not fit"):
        load_vae(wrong_shape)


def test_describe_state_dict_names_the_vae():
    text = describe_state_dict(_meta_state_dict(PRESETS["wan2.2"]))
    assert "Wan2.2 VAE" in text and "z 48" in text


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": object()}, path)
    with pytest.raises(ValueError, match="refused"):
        load_vae(path)
