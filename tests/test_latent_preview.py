"""Live-preview projections: the 8-channel format's linear map, and the shipped default VAE's own
format (named in its file) mapping its latents back to roughly the right colours."""
import pytest
import torch

from core.vae.latent_format import FLOWDIT_SHAPES, WAN21, latent_format_for


def test_formats_by_width():
    assert latent_format_for(8) is FLOWDIT_SHAPES and latent_format_for(16) is WAN21
    assert WAN21.preview_rgb(torch.zeros(1, 16, 1, 2, 2)) is None  # ComfyUI previews the Wan ones


def test_preview_is_the_stated_linear_map():
    latent = torch.randn(2, 8, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    rgb = FLOWDIT_SHAPES.preview_rgb(latent)
    by_hand = latent[0, :, 0].permute(1, 2, 0) @ torch.tensor(FLOWDIT_SHAPES.rgb_factors)
    expected = (by_hand + torch.tensor(FLOWDIT_SHAPES.rgb_bias)).clamp(-1, 1)
    assert rgb.shape == (4, 5, 3)
    torch.testing.assert_close(rgb, expected)


def test_preview_shows_the_colours_of_real_frames():
    from core.default_model.bundle import VAE_PATH
    from core.synthetic.shapes import make_clip, to_tensor
    from core.vae.loader import load_vae

    if not VAE_PATH.is_file():
        pytest.skip("the default model's VAE is not shipped yet")
    vae = load_vae(VAE_PATH)
    fmt = vae.latent_format           # named in the file's metadata, fitted at export
    assert fmt.rgb_factors is not None
    errors = []
    for seed in (1000, 1001, 1002):  # seeds outside the 0..47 the factors were fitted on
        video = to_tensor(make_clip(seed, frames=1).frames)[None]      # [1, 3, 1, 64, 64]
        with torch.no_grad():
            rgb = fmt.preview_rgb(vae.encode(video))                     # [n, n, 3]
        s = vae.spatial_stride
        n = 64 // s
        assert rgb.shape == (n, n, 3)
        blocks = video[0, :, 0].reshape(3, n, s, n, s).mean(dim=(2, 4)).permute(1, 2, 0)
        errors.append(float(((rgb - blocks) ** 2).mean().sqrt()))
    # Plain-colour frames span [-1, 1] (std ~0.47); a useless map would be off by ~0.5.
    assert max(errors) < 0.3, errors
