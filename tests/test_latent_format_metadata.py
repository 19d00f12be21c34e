"""A weights file may name its own latent format in its safetensors metadata (the pack's own
models: 16 latent channels, like Wan2.1, but previews of their own). The loaders read it back,
refuse an inconsistent or damaged entry with a message, and sampling normalises with the DiT's
format."""
from __future__ import annotations

import pytest
import torch

from core.dit import WanDiT, get_preset
from core.dit.loader import load_dit, save_dit
from core.vae.latent_format import (WAN21, LatentFormat, format_from_metadata, format_metadata,
                                    latent_format_for)


def _format(channels: int, seed: int = 0) -> LatentFormat:
    g = torch.Generator().manual_seed(seed)
    return LatentFormat(name=f"test{channels}",
                        mean=tuple((torch.randn(channels, generator=g)).tolist()),
                        std=tuple((0.5 + torch.rand(channels, generator=g)).tolist()),
                        rgb_factors=tuple(tuple(r) for r in
                                          torch.randn(channels, 3, generator=g).tolist()),
                        rgb_bias=(0.1, -0.2, 0.3))


def test_metadata_round_trip_and_clear_errors():
    fmt = _format(16)
    assert format_from_metadata(format_metadata(fmt)) == fmt
    assert format_from_metadata({}) is None
    for bad in ("not json", "[1, 2]", '{"name": "x", "mean": [0.0], "std": [0.0]}',
                '{"name": "x", "mean": [0.0, 1.0], "std": [1.0]}'):
        with pytest.raises(ValueError, match=r"model.safetensors: its 'latent_format' metadata"):
            format_from_metadata({"latent_format": bad}, "model.safetensors")


def _tiny_vae(tmp_path, z_dim: int, metadata: dict[str, str]):
    from core.default_model.train_vae import init_for_training
    from core.train.checkpointing import save_tensors
    from core.vae.config import VAEConfig
    from core.vae.model import WanVAEModel

    model = WanVAEModel(VAEConfig(dim=4, dec_dim=4, z_dim=z_dim, dim_mult=(1, 2, 4, 4),
                                  num_res_blocks=1))
    init_for_training(model, seed=2)
    return save_tensors(model.state_dict(), tmp_path / "vae.safetensors", metadata=metadata)


def test_vae_file_names_its_format(tmp_path):
    from core.vae.loader import load_vae

    fmt = _format(16)
    vae = load_vae(_tiny_vae(tmp_path, 16, format_metadata(fmt)))
    assert vae.latent_format == fmt
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        raw, normalised = vae.encode_raw(video), vae.encode(video)
    mean = torch.tensor(fmt.mean).view(16, 1, 1, 1)
    std = torch.tensor(fmt.std).view(16, 1, 1, 1)
    torch.testing.assert_close(normalised[0], (raw[0] - mean) / std, rtol=1e-5, atol=1e-5)
    plain = load_vae(_tiny_vae(tmp_path, 16, {}))
    assert plain.latent_format == WAN21                  # no entry: the format of its width
    with pytest.raises(ValueError, match="has 16 channels but the VAE has 8"):
        load_vae(_tiny_vae(tmp_path, 8, format_metadata(fmt)))


def test_dit_file_names_its_format(tmp_path):
    cfg = get_preset("tiny-t2v")                          # 16 latent channels
    torch.manual_seed(0)
    model = WanDiT(cfg)
    fmt = _format(cfg.out_dim)
    path = save_dit(model, tmp_path / "dit.safetensors", metadata=format_metadata(fmt))
    assert load_dit(path).latent_format == fmt
    assert load_dit(save_dit(model, tmp_path / "plain.safetensors")).latent_format is None
    with pytest.raises(ValueError, match="has 8 channels but the DiT outputs 16"):
        load_dit(save_dit(model, tmp_path / "bad.safetensors",
                          metadata=format_metadata(_format(8))))
    with pytest.raises(ValueError, match="bad2.safetensors: its 'latent_format' metadata"):
        load_dit(save_dit(model, tmp_path / "bad2.safetensors", metadata={"latent_format": "{"}))


def test_sampling_normalises_with_the_dits_format():
    """Text-to-video from pure noise: in normalised space the trajectory does not depend on the
    format, so with the DiT's format (m, s) the raw result must be m + s * (the result with the
    identity format). Tolerance 1e-5: the same fp32 arithmetic, then one affine map."""
    from core.pipeline import SampleRequest, sample_video

    cfg = get_preset("tiny-t2v", in_dim=4, out_dim=4)      # a width with the identity format
    assert latent_format_for(4).mean == (0.0,) * 4 and latent_format_for(4).std == (1.0,) * 4
    torch.manual_seed(1)
    dit = WanDiT(cfg).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    context = torch.randn(1, 5, cfg.text_dim, generator=torch.Generator().manual_seed(2))
    request = dict(latent=torch.zeros(1, 4, 2, 4, 4), sigmas=torch.tensor([1.0, 0.6, 0.3, 0.0]),
                   context=context, cfg=1.0, solver="euler", seed=5)
    plain = sample_video(dit, SampleRequest(**request), device=torch.device("cpu"))
    fmt = _format(4, seed=3)
    dit.latent_format = fmt
    own = sample_video(dit, SampleRequest(**request), device=torch.device("cpu"))
    mean = torch.tensor(fmt.mean).view(1, 4, 1, 1, 1)
    std = torch.tensor(fmt.std).view(1, 4, 1, 1, 1)
    assert not own.requires_grad                          # sampling keeps no autograd graph
    assert float((plain - own).abs().max()) > 0.1        # the format is not ignored
    torch.testing.assert_close(own, mean + std * plain, rtol=1e-5, atol=1e-5)


def test_info_names_the_format_a_file_carries(tmp_path):
    from core.checkpoint import describe_checkpoint

    fmt = _format(16)
    text = describe_checkpoint(_tiny_vae(tmp_path, 16, format_metadata(fmt)))
    assert text.startswith("VAE: ")
    assert "Latent format: test16, named in the file (with its own preview colours)" in text
    assert "Latent format" not in describe_checkpoint(_tiny_vae(tmp_path, 16, {}))
    model = WanDiT(get_preset("tiny-t2v"))
    dit_text = describe_checkpoint(save_dit(model, tmp_path / "dit.safetensors",
                                            metadata=format_metadata(fmt)))
    assert dit_text.startswith("DiT: ") and "Latent format: test16" in dit_text
