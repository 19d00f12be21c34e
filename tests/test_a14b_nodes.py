"""Wan2.2 A14B through the nodes (fallback host, no ComfyUI): two experts paired into one model for
the existing sampler, only one expert resident at a time, first-last-frame conditioning, and the
mistakes a user can make. With COMFYUI_PATH, the same memory-manager check inside ComfyUI."""
import pytest
import torch
from safetensors.torch import save_file
from conftest import use_models_dir


def a14b_i2v_config():
    """A tiny Wan2.2 I2V-A14B-shaped expert (in_dim 36, no CLIP image branch)."""
    from core.dit.config import PRESETS, get_preset

    if "tiny-i2v-a14b" in PRESETS:
        return get_preset("tiny-i2v-a14b")
    return get_preset("tiny-t2v", in_dim=36)  # the same tensors, before A14B detection existed


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from core.dit.config import get_preset
    from core.dit.config import dit_metadata
    from core.dit.random_weights import random_state_dict
    from core.vae.config import preset as vae_preset
    from core.vae.model import random_state_dict as vae_weights

    root = tmp_path_factory.mktemp("models")
    (root / "diffusion_models").mkdir()
    (root / "vae").mkdir()
    files = {"t2v_high": (get_preset("tiny-t2v"), 1), "t2v_low": (get_preset("tiny-t2v"), 2),
             "i2v_high": (a14b_i2v_config(), 3), "i2v_low": (a14b_i2v_config(), 4),
             "wide_t2v": (get_preset("tiny-t2v", dim=96, num_heads=3), 5)}
    for name, (cfg, seed) in files.items():
        save_file(random_state_dict(cfg, seed=seed), str(root / "diffusion_models" / f"{name}.safetensors"),
                  metadata=dit_metadata(cfg))
    save_file(vae_weights(vae_preset("test-2.1"), seed=2), str(root / "vae" / "vae2.1.safetensors"))
    return root


@pytest.fixture()
def nodes(pack, models_dir, monkeypatch, tmp_path):
    use_models_dir(pack, models_dir, monkeypatch)
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


def text(seed, length=7):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, 4096, generator=g), {"pooled_output": None}]]


def load(nodes, name):
    return nodes["FlowDiTLoader"].load(f"{name}.safetensors", "default", "sdpa")[0]


def record_residency(monkeypatch, pack):
    """Wrap the host's prepare/offload: log what is loaded, and fail if two are ever resident."""
    HostedModel = pack.nodes.host.HostedModel
    prepare, offload = HostedModel.prepare, HostedModel.offload
    log, resident = [], set()

    def tracked_prepare(self, *args, **kwargs):
        resident.add(id(self))
        assert len(resident) == 1, "two experts resident at once"
        log.append(("load", id(self)))
        return prepare(self, *args, **kwargs)

    def tracked_offload(self):
        resident.discard(id(self))
        log.append(("offload", id(self)))
        return offload(self)

    monkeypatch.setattr(HostedModel, "prepare", tracked_prepare)
    monkeypatch.setattr(HostedModel, "offload", tracked_offload)
    return log


def test_two_experts_run_in_one_sampler_one_resident_at_a_time(nodes, pack, monkeypatch):
    high, low = load(nodes, "t2v_high"), load(nodes, "t2v_low")
    (pair,) = nodes["FlowDiTExpertPair"].pair(high, low, "step", 0.0, 2, 1.0, 1.0)
    (vae,) = nodes["FlowDiTVAELoader"].load("vae2.1.safetensors")
    (latent,) = nodes["FlowDiTEmptyVideoLatent"].generate(vae, 32, 32, 5, 1)
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(4, 5.0, 1.0)
    log = record_residency(monkeypatch, pack)
    (out,) = nodes["FlowDiTSampler"].sample(pair, text(1), text(2), latent, sigmas, "euler", 1.0, 0)
    loads = [h for op, h in log if op == "load"]
    assert loads == [id(high.hosted), id(low.hosted)], "each expert is loaded once, high first"
    assert log.index(("offload", id(high.hosted))) < log.index(("load", id(low.hosted)))

    # The result is the high model on the first two steps, then the low model (euler: no history),
    # i.e. the same as two samplers chained by hand on the split schedule.
    from core.flow.noise import initial_noise
    from core.flow.sampler import sample
    from core.vae.latent_format import latent_format_for

    fmt = latent_format_for(16)
    ctx = text(1)[0][0]
    x = initial_noise(latent["samples"].shape, 0)
    mid = sample(high.module, x, sigmas[:3].double(), positive=ctx, solver="euler")
    ref = fmt.denormalize(sample(low.module, mid, sigmas[2:].double(), positive=ctx, solver="euler"))
    # Our sigmas arrive as float32 from the scheduler node; both sides use the same values.
    torch.testing.assert_close(out["samples"], ref, rtol=1e-5, atol=1e-5)

    # A boundary switch gives the same split here (shift 5, 4 steps: 1, .9375 >= 0.9 > .8333).
    (by_sigma,) = nodes["FlowDiTExpertPair"].pair(high, low, "boundary", 0.9, 0, 0.0, 0.0)
    (out2,) = nodes["FlowDiTSampler"].sample(by_sigma, text(1), text(2), latent, sigmas, "euler", 1.0, 0)
    torch.testing.assert_close(out2["samples"], out["samples"], rtol=0, atol=0)


def test_default_boundary_and_per_expert_cfg(nodes, pack):
    from core.flow.schedules import flow_sigmas

    experts = pack.nodes.experts
    sigmas = flow_sigmas(40, shift=12.0)
    t2v = nodes["FlowDiTExpertPair"].pair(load(nodes, "t2v_high"), load(nodes, "t2v_low"),
                                          "boundary", 0.0, 0, 4.0, 3.0)[0]
    i2v = nodes["FlowDiTExpertPair"].pair(load(nodes, "i2v_high"), load(nodes, "i2v_low"),
                                          "boundary", 0.0, 0, 0.0, 0.0)[0]
    high, low = experts.pipeline_experts(t2v, sigmas)
    assert high.sigma_min == 0.875 and low.sigma_min == 0.0       # official T2V boundary
    assert (high.cfg, low.cfg) == (4.0, 3.0)
    high, low = experts.pipeline_experts(i2v, sigmas)
    assert high.sigma_min == 0.900 and (high.cfg, low.cfg) == (None, None)  # None: the sampler's cfg


def test_i2v_experts_with_first_and_last_frame(nodes, pack, monkeypatch):
    (vae,) = nodes["FlowDiTVAELoader"].load("vae2.1.safetensors")
    start, end = torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3)
    pos, neg, latent = nodes["FlowDiTI2VConditioning"].build(text(1), text(2), vae, start, 32, 32, 9, 1,
                                                             None, end)
    mask = pos[0][1]["concat_mask"]
    assert mask.shape == (1, 4, 3, 4, 4)
    # ComfyUI's convention (0 = given): all 4 channels of latent frame 0, channel 3 of the last.
    assert torch.equal(mask[:, :, 0], torch.zeros(1, 4, 4, 4))
    assert torch.equal(mask[:, :3, 2], torch.ones(1, 3, 4, 4)) and torch.equal(mask[:, 3, 2], torch.zeros(1, 4, 4))
    assert torch.equal(mask[:, :, 1], torch.ones(1, 4, 4, 4))
    # Without the end image: the first frame only, the frame-0 pattern as before.
    pos1 = nodes["FlowDiTI2VConditioning"].build(text(1), text(2), vae, start, 32, 32, 9, 1)[0]
    assert not torch.equal(pos1[0][1]["concat_latent_image"][:, :, 2], pos[0][1]["concat_latent_image"][:, :, 2])
    torch.testing.assert_close(pos1[0][1]["concat_latent_image"][:, :, :2], pos[0][1]["concat_latent_image"][:, :, :2],
                               rtol=0, atol=0)  # causal VAE: the end image cannot change earlier frames

    (pair,) = nodes["FlowDiTExpertPair"].pair(load(nodes, "i2v_high"), load(nodes, "i2v_low"),
                                              "boundary", 0.0, 0, 3.5, 3.5)
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(3, 5.0, 1.0)
    log = record_residency(monkeypatch, pack)
    (out,) = nodes["FlowDiTSampler"].sample(pair, pos, neg, latent, sigmas, "dpmpp_2m", 1.0, 0)
    assert out["samples"].shape == (1, 16, 3, 4, 4) and torch.isfinite(out["samples"]).all()
    assert [op for op, _ in log].count("load") == 2


def test_user_mistakes_with_experts(nodes):
    t2v_high, t2v_low, i2v_low = load(nodes, "t2v_high"), load(nodes, "t2v_low"), load(nodes, "i2v_low")
    pair_node = nodes["FlowDiTExpertPair"]
    with pytest.raises(ValueError, match="in_dim 16 vs 36"):
        pair_node.pair(t2v_high, i2v_low, "boundary", 0.0, 0, 0.0, 0.0)
    with pytest.raises(ValueError, match="dim 64 vs 96"):
        pair_node.pair(t2v_high, load(nodes, "wide_t2v"), "boundary", 0.0, 0, 0.0, 0.0)
    (pair,) = pair_node.pair(t2v_high, t2v_low, "boundary", 0.0, 0, 0.0, 0.0)
    with pytest.raises(ValueError, match="not a pair"):
        pair_node.pair(pair, t2v_low, "boundary", 0.0, 0, 0.0, 0.0)
    with pytest.raises(ValueError, match="LoRA to each expert"):
        nodes["FlowDiTLoraLoader"].apply(pair, "any.safetensors", 1.0)
    # A T2V expert given a start image: a clear error, not a shape crash.
    (vae,) = nodes["FlowDiTVAELoader"].load("vae2.1.safetensors")
    pos, neg, latent = nodes["FlowDiTI2VConditioning"].build(text(1), text(2), vae, torch.rand(1, 32, 32, 3),
                                                             32, 32, 5, 1)
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(2, 5.0, 1.0)
    with pytest.raises(ValueError, match="text-to-video model: it takes no start image"):
        nodes["FlowDiTSampler"].sample(pair, pos, neg, latent, sigmas, "euler", 1.0, 0)


@pytest.mark.comfyui
def test_comfyui_memory_manager_loads_one_expert_at_a_time(comfy, pack, models_dir, monkeypatch):
    """Inside ComfyUI: every load_models_gpu call names exactly one expert, and when the low-noise
    expert is loaded the high-noise one is no longer among the loaded models."""
    from core.dit.loader import load_dit

    host = pack.nodes.host
    mm = comfy("comfy.model_management")
    monkeypatch.setattr(host, "HAVE_COMFY", True)
    monkeypatch.setattr(host, "_mm", mm)
    monkeypatch.setattr(host, "_patcher", comfy("comfy.model_patcher"))
    monkeypatch.setattr(host, "_utils", comfy("comfy.utils"))
    handles = pack.nodes.handles
    experts = []
    for name in ("t2v_high", "t2v_low"):
        module = load_dit(models_dir / "diffusion_models" / f"{name}.safetensors", dtype=torch.float32)
        module.eval().requires_grad_(False)
        experts.append(handles.ModelHandle(hosted=host.HostedModel(module), name=name,
                                           compute_dtype=torch.float32))
    high, low = experts
    assert high.hosted.patcher is not None
    calls = []
    original = mm.load_models_gpu

    def recording(models, *args, **kwargs):
        loaded = [m.model for m in mm.current_loaded_models]
        calls.append((list(models), loaded))
        return original(models, *args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", recording)
    (pair,) = pack.NODE_CLASS_MAPPINGS["FlowDiTExpertPair"]().pair(high, low, "step", 0.0, 2, 0.0, 0.0)
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    sigmas = torch.tensor([1.0, 0.9375, 0.8333, 0.625, 0.0])
    (out,) = pack.NODE_CLASS_MAPPINGS["FlowDiTSampler"]().sample(pair, text(1), text(2), latent, sigmas,
                                                                 "dpmpp_2m", 1.0, 0)
    assert torch.isfinite(out["samples"]).all()
    assert [len(models) for models, _ in calls] == [1, 1]
    assert [models[0] for models, _ in calls] == [high.hosted.patcher, low.hosted.patcher]
    assert high.hosted.patcher not in calls[1][1], "the high-noise expert was still loaded"
    assert high.hosted.patcher not in [m.model for m in mm.current_loaded_models]
