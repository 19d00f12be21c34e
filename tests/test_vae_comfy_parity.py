"""Parity with ComfyUI's own Wan VAEs (comfy/ldm/wan/vae.py and vae2_2.py), with COMFYUI_PATH set
(skipped otherwise; comfy is imported only inside the `comfy` fixture, never at module import).

The same random weights go into ComfyUI's WanVAE and ours (reduced widths, the published layout
otherwise); raw latents, normalised latents (against ComfyUI's latent_formats.Wan21/Wan22) and
decoded frames must agree in float32 to a tight tolerance (only summation order differs)."""
import pytest
import torch

from core.vae import VAEConfig
from core.vae.loader import build_vae
from core.vae.model import random_state_dict

CASES = {
    # name: (our config, ComfyUI module, constructor kwargs, latent format class)
    "wan2.1": (VAEConfig(dim=8, dec_dim=8), "comfy.ldm.wan.vae",
               dict(dim=8, z_dim=16, temperal_downsample=[False, True, True]), "Wan21"),
    "wan2.2": (VAEConfig(version="2.2", dim=8, dec_dim=16, z_dim=48, patch_size=2),
               "comfy.ldm.wan.vae2_2",
               dict(dim=8, dec_dim=16, z_dim=48, temperal_downsample=[False, True, True]), "Wan22"),
}
TOL = dict(rtol=1e-4, atol=2e-5)


@pytest.mark.comfyui
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("frames", [1, 9])
def test_same_weights_same_latents_and_frames(comfy, name, frames):
    cfg, module, kwargs, fmt = CASES[name]
    sd = random_state_dict(cfg, seed=11)
    theirs = comfy(module).WanVAE(**kwargs).eval()
    theirs.load_state_dict(sd, strict=True)          # our keys are exactly theirs
    ours = build_vae(cfg, sd)
    latent_format = getattr(comfy("comfy.latent_formats"), fmt)()

    s = cfg.spatial_stride
    g = torch.Generator().manual_seed(frames)
    video = torch.rand(1, 3, frames, 2 * s, 3 * s, generator=g) * 2 - 1
    with torch.no_grad():
        their_raw = theirs.encode(video)
        their_frames = theirs.decode(their_raw)
    our_raw = ours.encode_raw(video)
    torch.testing.assert_close(our_raw, their_raw, **TOL)
    torch.testing.assert_close(ours.encode(video), latent_format.process_in(their_raw), **TOL)
    # Unclamped decoder output, then the public (clamped) decode of the normalised latent.
    torch.testing.assert_close(ours.model.decode_stream(their_raw), their_frames, **TOL)
    torch.testing.assert_close(ours.decode(latent_format.process_in(their_raw)),
                               their_frames.clamp(-1, 1), **TOL)
    print(f"{name} T={frames}: max |latent diff| {(our_raw - their_raw).abs().max():.2e}, "
          f"max |frame diff| {(ours.model.decode_stream(their_raw) - their_frames).abs().max():.2e}")
