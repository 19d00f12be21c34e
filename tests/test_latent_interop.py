"""LATENT interop with ComfyUI's own Wan VAE object (what its VAEEncode/VAEDecode nodes call), with
COMFYUI_PATH set: latents made by FlowDiT nodes decode with ComfyUI's VAE and the other way round,
because both sides pass raw VAE latents between nodes."""
import pytest
import torch

# ComfyUI reads the Wan2.1 VAE's widths from the weights but builds the Wan2.2 VAE at its fixed
# published widths, so the 2.2 case uses the full-size configuration (random weights, tiny frames).
VAE_PRESETS = ["test-2.1", "wan2.2"]


@pytest.fixture(scope="module")
def setup(comfy, tmp_path_factory, pack):
    from safetensors.torch import save_file

    from core.vae.config import preset
    from core.vae.model import random_state_dict

    root = tmp_path_factory.mktemp("interop")
    (root / "vae").mkdir()
    sds = {}
    for name in VAE_PRESETS:
        sds[name] = random_state_dict(preset(name), seed=5)
        save_file(sds[name], str(root / "vae" / f"{name}.safetensors"))
    return comfy("comfy.sd"), sds, root


@pytest.mark.comfyui
@pytest.mark.parametrize("name", VAE_PRESETS)
def test_latents_cross_between_flowdit_and_comfyui_vae_nodes(setup, name, pack, monkeypatch):
    comfy_sd, sds, root = setup
    monkeypatch.setattr(pack.nodes.host, "_fallback_dir", lambda folder: root / folder)
    monkeypatch.setattr(pack.nodes.host, "HAVE_COMFY", False)
    theirs = comfy_sd.VAE(sd=dict(sds[name]))
    (ours,) = pack.NODE_CLASS_MAPPINGS["FlowDiTVAELoader"]().load(f"{name}.safetensors")
    stride = ours.spatial_stride
    images = torch.rand(5, 2 * stride, 2 * stride, 3)

    (our_latent,) = pack.NODE_CLASS_MAPPINGS["FlowDiTVAEEncode"]().encode(ours, images)
    their_latent = theirs.encode(images)
    torch.testing.assert_close(our_latent["samples"], their_latent.float(), rtol=1e-4, atol=1e-4)

    # Our latent through their decoder, their latent through ours: same frames either way.
    (ours_decoded,) = pack.NODE_CLASS_MAPPINGS["FlowDiTVAEDecode"]().decode(ours, {"samples": their_latent})
    theirs_decoded = theirs.decode(our_latent["samples"]).reshape(-1, *images.shape[1:])
    assert ours_decoded.shape == theirs_decoded.shape == images.shape
    torch.testing.assert_close(ours_decoded, theirs_decoded.float(), rtol=1e-4, atol=1e-4)
