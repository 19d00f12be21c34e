"""Wan2.2 A14B against ComfyUI's own nodes (COMFYUI_PATH set; skipped otherwise): the whole
two-expert 4-step sampling equals ComfyUI's two KSamplerAdvanced chained as in its template, and
first-last-frame conditioning equals WanFirstLastFrameToVideo / WanFunInpaintToVideo.

ComfyUI's `nodes.py` is a top-level module named `nodes`, like the pack's own folder; the fixture
below loads it under that name only while these tests run."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

# Latents after 4 euler steps of two separately built fp32 DiTs (ours and ComfyUI's WanModel, whose
# single forwards agree to ~1e-6 here, 1e-4 bound in test_dit_comfy_parity) and ComfyUI's
# normalise / un-normalise round trips between its two samplers: agreement to a few 1e-6.
SAMPLING_TOL = dict(rtol=1e-4, atol=1e-4)
# VAE encodings of separately built fp32 VAEs (as test_vae_comfy_parity): summation order only.
VAE_TOL = dict(rtol=1e-4, atol=2e-5)


@pytest.fixture(scope="module")
def comfy_nodes(comfy, comfyui_path):
    """ComfyUI's nodes.py, loaded as the module `nodes` for ComfyUI's own imports."""
    saved = sys.modules.get("nodes")
    spec = importlib.util.spec_from_file_location("nodes", comfyui_path / "nodes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["nodes"] = module
    try:
        spec.loader.exec_module(module)
        yield module, comfy
    finally:
        if saved is None:
            sys.modules.pop("nodes", None)
        else:
            sys.modules["nodes"] = saved


def wide_expert_config():
    """An I2V-A14B-shaped expert (in_dim 36, no image branch) with 128-wide heads, so ComfyUI's
    own detection (num_heads = dim / 128) builds the same model as ours."""
    from a14b_models import a14b_config

    return a14b_config("i2v", dim=256, ffn_dim=512, num_heads=2, num_layers=2)


def our_dit(cfg, sd):
    from core.dit.model import WanDiT

    dit = WanDiT(cfg, compute_dtype=torch.float32)
    dit.load_state_dict(sd, strict=True)
    return dit.eval().requires_grad_(False)


@pytest.mark.comfyui
def test_two_expert_sampling_matches_two_chained_ksamplers(comfy_nodes):
    from core.dit.random_weights import random_state_dict
    from core.flow.schedules import flow_sigmas
    from core.flow.stages import step_boundary
    from core.pipeline import Expert, SampleRequest, sample_video

    nodes, comfy = comfy_nodes
    sd_module = comfy("comfy.sd")
    sampling = comfy("comfy_extras.nodes_model_advanced").ModelSamplingSD3()
    cfg = wide_expert_config()
    weights = {"high": random_state_dict(cfg, seed=31), "low": random_state_dict(cfg, seed=32)}

    g = torch.Generator().manual_seed(5)
    frames, h, w, seed = 3, 4, 6, 1234
    context = torch.randn(1, 9, cfg.text_dim, generator=g)
    image = torch.randn(1, 16, frames, h, w, generator=g)          # a raw image latent
    mask = torch.ones(1, 4, frames, h, w)                             # 0 = given (ComfyUI's convention)
    mask[:, :, 0] = 0.0
    mask[:, 3, -1] = 0.0                                              # first and last frame given
    options = {"pooled_output": None, "concat_latent_image": image, "concat_mask": mask}
    cond = [[context, options]]
    empty = {"samples": torch.zeros(1, 16, frames, h, w)}

    # ComfyUI: each file through its own loader, shift 5 (ModelSamplingSD3), euler + simple,
    # 4 steps split at 2 exactly as the Wan2.2 14B template wires its two KSamplerAdvanced.
    models = {}
    for name, sd in weights.items():
        patcher = sd_module.load_diffusion_model_state_dict(dict(sd), model_options={"dtype": torch.float32})
        assert patcher.model.diffusion_model.num_heads == cfg.num_heads
        models[name] = sampling.patch(patcher, shift=5.0)[0]
    ksampler = nodes.KSamplerAdvanced()
    (mid,) = ksampler.sample(models["high"], "enable", seed, 4, 1.0, "euler", "simple", cond, cond, empty,
                             0, 2, "enable")
    (theirs,) = ksampler.sample(models["low"], "disable", seed, 4, 1.0, "euler", "simple", cond, cond, mid,
                                2, 10000, "disable")

    # Ours: one sampler, both experts, switch after 2 steps, on the formula's schedule.
    sigmas = flow_sigmas(4, shift=5.0)
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    their_sigmas = models["high"].get_model_object("model_sampling")
    high, low = our_dit(cfg, weights["high"]), our_dit(cfg, weights["low"])
    request = SampleRequest(latent=empty["samples"], sigmas=sigmas, context=context, seed=seed,
                            solver="euler", cfg=1.0, concat_latent=image, concat_mask=mask)
    ours = sample_video([Expert(high, step_boundary(sigmas, 2)), Expert(low, 0.0)], request,
                        device=torch.device("cpu"))
    diff = (ours - theirs["samples"]).abs().max().item()
    scale = theirs["samples"].abs().max().item()
    print(f"two-expert euler 4 steps vs 2x KSamplerAdvanced: max abs diff {diff:.3g} "
          f"(max |latent| {scale:.3g}); ComfyUI sigma_max {float(their_sigmas.sigma_max):.6g}")
    torch.testing.assert_close(ours, theirs["samples"], **SAMPLING_TOL)
    # The experts matter: the low-noise expert alone gives a clearly different latent.
    alone = sample_video(low, request, device=torch.device("cpu"))
    assert (alone - theirs["samples"]).abs().max() > 100 * max(diff, 1e-6)


class ComfyVAEStandIn:
    """What ComfyUI's Wan nodes use of a VAE, around ComfyUI's own WanVAE module: encode an IMAGE
    batch [T, H, W, 3] in [0, 1] as one video."""

    def __init__(self, module):
        self.module = module
        self.latent_channels = 16

    def spacial_compression_encode(self):
        return 8

    def encode(self, pixels):
        video = pixels[..., :3].movedim(-1, 0).unsqueeze(0) * 2.0 - 1.0   # [1, 3, T, H, W]
        with torch.no_grad():
            return self.module.encode(video)


@pytest.mark.comfyui
@pytest.mark.parametrize("node_id", ["WanFirstLastFrameToVideo", "WanFunInpaintToVideo"])
def test_first_last_frame_conditioning_matches_comfyui(comfy_nodes, pack, node_id):
    from core.vae import VAEConfig
    from core.vae.loader import build_vae
    from core.vae.model import random_state_dict

    nodes, comfy = comfy_nodes
    cfg = VAEConfig(dim=8, dec_dim=8)
    sd = random_state_dict(cfg, seed=7)
    theirs = comfy("comfy.ldm.wan.vae").WanVAE(dim=8, z_dim=16, temperal_downsample=[False, True, True]).eval()
    theirs.load_state_dict(sd, strict=True)
    ours = build_vae(cfg, sd)
    module = ours if isinstance(ours, torch.nn.Module) else ours.model
    handle = pack.nodes.handles.VAEHandle(vae=ours, hosted=pack.nodes.host.HostedModel(module), name="vae")

    g = torch.Generator().manual_seed(3)
    width, height, length = 48, 32, 13
    start, end = torch.rand(1, height, width, 3, generator=g), torch.rand(1, height, width, 3, generator=g)
    text = [[torch.randn(1, 5, 4096, generator=g), {"pooled_output": None}]]
    node = getattr(comfy("comfy_extras.nodes_wan"), node_id)
    kwargs = {"clip_vision_output": None} if node_id == "WanFunInpaintToVideo" else {}
    out = node.execute(text, text, ComfyVAEStandIn(theirs), width, height, length, 1,
                       start_image=start, end_image=end, **kwargs)
    their_pos, _, their_latent = out.result if hasattr(out, "result") else out
    pos, neg, latent = pack.NODE_CLASS_MAPPINGS["FlowDiTI2VConditioning"]().build(
        text, text, handle, start, width, height, length, 1, None, end)

    assert latent["samples"].shape == their_latent["samples"].shape == (1, 16, 4, 4, 6)
    ours_opts, their_opts = pos[0][1], their_pos[0][1]
    # The mask is the layout itself (0/1 values): exactly ComfyUI's.
    assert ours_opts["concat_mask"].shape == their_opts["concat_mask"].shape == (1, 4, 4, 4, 6)
    assert torch.equal(ours_opts["concat_mask"], their_opts["concat_mask"].to(ours_opts["concat_mask"].dtype))
    torch.testing.assert_close(ours_opts["concat_latent_image"], their_opts["concat_latent_image"], **VAE_TOL)
    assert neg[0][1]["concat_mask"] is ours_opts["concat_mask"]
