"""The memory guard (core/memory.py): the estimate equals its formulas worked by hand for real
model sizes, grows with every dimension, and the refusal names the estimate and the largest size
that fits — which does fit, while one step more does not."""
from types import SimpleNamespace

import pytest
import torch

from core.dit import get_preset
from core.memory import (LOWER_BOUND, MAX_STEPS, SAMPLER_COPIES, ModelSizes, check_request_fits,
                         check_steps, estimate_request_memory, estimate_sampling_memory, fits)
from core.vae import PRESETS, build_vae
from core.vae.model import random_state_dict


def test_wan21_1_3b_at_480p_by_hand():
    # Wan2.1 T2V-1.3B (D 1536, Dff 8960, patch 1x2x2) + Wan2.1 VAE (16 ch, x8, decoder 96),
    # bf16 compute, 832x480, 81 frames: latent 21 x 60 x 104, tokens 21 x 30 x 52.
    sizes = ModelSizes(latent_channels=16, spatial_stride=8, temporal_stride=4, patch=(1, 2, 2),
                       dim=1536, ffn_dim=8960, decoder_width=96, compute_bytes=2, vae_bytes=4,
                       batched_cfg=True)
    e = estimate_request_memory(832, 480, 81, model=sizes, cfg=True, vae_tiling=False)
    latent = 16 * 21 * 60 * 104 * 4
    assert e.latent == latent and e.sampler == SAMPLER_COPIES * latent
    assert e.tokens == 21 * 30 * 52 == 32760
    assert e.dit == 2 * 32760 * (8 * 1536 + 4 * 1536 * 2 + 2 * 8960 * 2)
    assert e.vae_decode == 400 * 480 * 832 * 96
    assert e.video == 3 * 81 * 480 * 832 * 5
    assert e.total == e.latent + e.sampler + e.video + max(e.dit, e.vae_decode)
    # Tiled decoding: one 32 x 32 latent tile (256 x 256 pixels) of working memory.
    tiled = estimate_request_memory(832, 480, 81, model=sizes, cfg=True, vae_tiling=True)
    assert tiled.vae_decode == 400 * 256 * 256 * 96
    # Without CFG (or unbatched CFG) the DiT runs on one batch.
    assert estimate_request_memory(832, 480, 81, model=sizes, cfg=False).dit == e.dit // 2


def test_model_sizes_from_loaded_models():
    cfg = PRESETS["test-2.2"]
    vae = build_vae(cfg, random_state_dict(cfg, seed=0))
    dit = get_preset("wan2.2-ti2v-5b")
    sizes = ModelSizes.from_models(dit, vae, compute_dtype=torch.bfloat16)
    assert (sizes.dim, sizes.ffn_dim, sizes.patch, sizes.compute_bytes) == (3072, 14336, (1, 2, 2), 2)
    assert (sizes.latent_channels, sizes.spatial_stride, sizes.decoder_width) == (
        vae.latent_channels, vae.spatial_stride, cfg.dec_dim)


@pytest.mark.parametrize("grow", [(1664, 480, 81, 1), (832, 960, 81, 1), (832, 480, 161, 1),
                                  (832, 480, 81, 2)])
def test_estimate_grows_with_every_dimension(grow):
    base = estimate_request_memory(832, 480, 81, 1, model=ModelSizes())
    bigger = estimate_request_memory(*grow, model=ModelSizes())
    assert bigger.total > base.total and bigger.latent > base.latent


def _vae_sizes(cfg):
    """The attributes ModelSizes.from_models reads, without building a full-size VAE."""
    return SimpleNamespace(latent_channels=cfg.z_dim, spatial_stride=cfg.spatial_stride,
                           temporal_stride=cfg.temporal_stride, config=cfg)


def test_lower_bound_is_below_every_supported_model():
    """What VALIDATE_INPUTS uses before the models are known must not exceed any supported
    model's estimate (the Wan presets with their VAEs, the pack's default model), or it would
    refuse a request that fits. (The tiny test presets are smaller still; at the sizes tests
    use nothing comes near a refusal.)"""
    from core.default_model import bundle

    default = bundle.load_default_model("cpu")
    models = [ModelSizes.from_models(default.dit.config, default.vae, base=ModelSizes(
        compute_bytes=2, vae_bytes=2))]
    for dit, vae in (("wan2.1-t2v-1.3b", "wan2.1"), ("wan2.1-t2v-14b", "wan2.1"),
                     ("wan2.1-i2v-14b", "wan2.1"), ("wan2.2-ti2v-5b", "wan2.2")):
        models.append(ModelSizes.from_models(get_preset(dit), _vae_sizes(PRESETS[vae]),
                                             base=ModelSizes(compute_bytes=2, vae_bytes=2)))
    for real in models:
        for size in [(832, 480, 81), (1280, 704, 121), (64, 64, 17), (8192, 8192, 1001)]:
            low = estimate_request_memory(*size, model=LOWER_BOUND)
            assert low.total <= estimate_request_memory(*size, model=real).total, (real, size)


def test_refusal_names_the_estimate_and_a_largest_size_that_fits():
    budget = 8 * 2 ** 30  # an 8 GiB CPU machine
    sizes = ModelSizes()
    with pytest.raises(ValueError) as err:
        check_request_fits(8192, 8192, 1001, model=sizes, device="cpu", host_bytes=budget)
    text = str(err.value)
    assert "8192x8192x1001" in text and "needs about" in text and "8.0 GiB" in text
    size = text.split("the largest that fits is ")[1].split(" at ")[0]
    w, h = (int(v) for v in size.split("x"))
    step = sizes.spatial_stride * 2
    assert w == h and w % step == 0
    assert check_request_fits(w, h, 1001, model=sizes, host_bytes=budget)  # it does fit
    over = estimate_request_memory(w + step, h + step, 1001, model=sizes)
    assert not fits(over, budget, budget)                                  # one step more does not


def test_requests_that_fit_pass_and_gpu_budget_is_separate():
    e = check_request_fits(832, 480, 81, model=ModelSizes(), host_bytes=64 * 2 ** 30)
    assert e.total < 64 * 2 ** 30
    # On a GPU the DiT peak must fit the card, the latent and video the host.
    dev = estimate_request_memory(832, 480, 81, model=ModelSizes(), device="meta")
    assert not dev.on_cpu
    assert fits(dev, dev.host, dev.device) and not fits(dev, dev.host, dev.device - 1)


def test_sampling_estimate_matches_the_request_estimate():
    request = estimate_request_memory(832, 480, 81, model=ModelSizes())
    sampling = estimate_sampling_memory((1, 16, 21, 60, 104), model=ModelSizes())
    assert (sampling.latent, sampling.dit, sampling.tokens) == (request.latent, request.dit, request.tokens)


def test_steps_are_capped():
    assert check_steps(30) == 30
    for bad in (0, -1, MAX_STEPS + 1, 10 ** 9):
        with pytest.raises(ValueError, match=f"between 1 and {MAX_STEPS}"):
            check_steps(bad)
    with pytest.raises(TypeError):
        check_steps("30")
