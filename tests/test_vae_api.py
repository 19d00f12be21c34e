"""The public VAE object: shapes, raw vs normalised latents, and clear errors for bad input."""
import pytest
import torch

from core.vae import PRESETS, WAN21, WAN22, LatentFormat, latent_format_for, load_vae
from core.vae.model import random_state_dict


@pytest.fixture(scope="module")
def vae21():
    return load_vae(random_state_dict(PRESETS["test-2.1"], seed=2), dtype=torch.float64)


@pytest.fixture(scope="module")
def vae22():
    return load_vae(random_state_dict(PRESETS["test-2.2"], seed=2), dtype=torch.float64)


def test_shapes_and_normalisation(vae21):
    video = torch.rand(2, 3, 5, 24, 16, dtype=torch.float64) * 2 - 1
    raw = vae21.encode_raw(video)
    z = vae21.encode(video)
    assert z.shape == (2, 16, 2, 3, 2) and vae21.latent_frames(9) == 3
    mean = torch.tensor(WAN21.mean, dtype=torch.float64).view(16, 1, 1, 1)
    std = torch.tensor(WAN21.std, dtype=torch.float64).view(16, 1, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std)
    out = vae21.decode(z)
    assert out.shape == video.shape and out.abs().max() <= 1
    torch.testing.assert_close(out, vae21.decode_raw(raw))
    image = vae21.decode(vae21.encode(video[:, :, :1]))          # a single image is T = 1
    assert image.shape == (2, 3, 1, 24, 16)


def test_latent_formats():
    assert latent_format_for(16) is WAN21 and latent_format_for(48) is WAN22
    assert (WAN21.channels, WAN22.channels) == (16, 48)
    assert WAN21.mean[:3] == (-0.7571, -0.7089, -0.9113) and WAN22.std[-1] == 0.7744
    x = torch.randn(1, 48, 2, 3, 3)
    torch.testing.assert_close(WAN22.denormalize(WAN22.normalize(x)), x)
    with pytest.raises(ValueError, match="48 channels.*has 16"):
        WAN21.normalize(torch.zeros(1, 48, 1, 1, 1))
    with pytest.raises(ValueError):
        LatentFormat("bad", (0.0,), (0.0,))


@pytest.mark.parametrize("frames, hint", [(2, "use 1 or 5"), (8, "use 5 or 9"), (0, "use 1")])
def test_bad_frame_counts(vae21, frames, hint):
    with pytest.raises(ValueError, match=hint):
        vae21.encode(torch.zeros(1, 3, frames, 16, 16, dtype=torch.float64))


def test_bad_sizes_name_the_nearest_valid_ones(vae21, vae22):
    with pytest.raises(ValueError, match=r"height 16 or 24 and width 16"):
        vae21.encode(torch.zeros(1, 3, 1, 20, 16))
    with pytest.raises(ValueError, match=r"multiples of 16.*height 16 or 32 and width 32"):
        vae22.encode(torch.zeros(1, 3, 1, 24, 32))


def test_pad_and_crop(vae21):
    video = torch.rand(1, 3, 5, 20, 13, dtype=torch.float64) * 2 - 1
    z = vae21.encode(video, pad=True)
    assert z.shape == (1, 16, 2, 3, 2)
    padded = torch.nn.functional.pad(video[0], (0, 3, 0, 4), mode="replicate")[None]
    torch.testing.assert_close(z, vae21.encode(padded))
    assert vae21.decode(z, crop=(20, 13)).shape == video.shape
    with pytest.raises(ValueError, match="crop"):
        vae21.decode(z, crop=(40, 13))


def test_bad_latents(vae21, vae22):
    with pytest.raises(ValueError, match="16 channels.*takes 48"):
        vae22.decode(torch.zeros(1, 16, 2, 2, 2))
    bad = torch.zeros(1, 16, 2, 2, 2)
    bad[0, 3, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vae21.decode(bad)
    with pytest.raises(ValueError, match=r"\[B, C, F, H, W\]"):
        vae21.decode(torch.zeros(16, 2, 2, 2))
    with pytest.raises(TypeError):
        vae21.decode([[0.0]])


def test_bad_videos(vae21):
    with pytest.raises(ValueError, match="4 channels"):
        vae21.encode(torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="an image is T=1"):
        vae21.encode(torch.zeros(1, 3, 16, 16))
    video = torch.zeros(1, 3, 1, 16, 16)
    video[..., 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        vae21.encode(video)
    with pytest.raises(ValueError, match="tiling"):
        vae21.encode(torch.zeros(1, 3, 1, 16, 16), tiling="big")


def test_progress_reaches_total(vae21):
    calls = []
    vae21.decode(torch.zeros(1, 16, 3, 2, 2, dtype=torch.float64),
                 progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (3, 3)
