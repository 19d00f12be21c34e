"""Classifier-free guidance around a stand-in DiT (the real one lives in core/dit; not imported)."""
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from core.flow.guidance import GuidedVelocity, guidance_interval
from core.flow.sampler import sample
from core.flow.schedules import flow_sigmas
from core.flow.solvers import SOLVERS, SamplingCancelled


class StandInDiT:
    """dit(x, t, context, clip_fea=None) -> v, a smooth function of all its inputs that treats
    every batch row independently (as a DiT does). Records each call."""

    def __init__(self, out_channels=None, patch=(1, 2, 2)):
        self.calls = []
        self.out_channels = out_channels
        self.config = SimpleNamespace(patch_size=patch)

    def __call__(self, x, t, context, clip_fea=None):
        self.calls.append(dict(batch=x.shape[0], channels=x.shape[1], t=t.clone(),
                               context=context.clone(), clip=clip_fea))
        b, c, f, h, w = x.shape
        ctx = context.mean(dim=(1, 2)).reshape(b, 1, 1, 1, 1)  # [B, 1, 1, 1, 1]
        if t.ndim == 1:
            tt = t.reshape(b, 1, 1, 1, 1)
        else:  # per-token [B, L] -> per latent pixel [B, 1, F, H, W]
            tt = t.reshape(b, 1, f, h // 2, w // 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
        v = torch.tanh(x) * (1 + ctx) + 0.3 * torch.cos(tt / 1000 * 3) * ctx
        if clip_fea is not None:
            v = v + clip_fea.mean(dim=(1, 2)).reshape(b, 1, 1, 1, 1)
        return v[:, : self.out_channels] if self.out_channels else v


def contexts(batch=2, lp=5, ln=5, dim=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, lp, dim, generator=g, dtype=dtype),
            torch.randn(batch, ln, dim, generator=g, dtype=dtype))


def latent(batch=2, c=4, f=3, h=4, w=4, seed=0):
    return torch.randn(batch, c, f, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cfg_one_equals_conditional_and_calls_once_per_step():
    pos, neg = contexts()
    x = latent()
    sigmas = flow_sigmas(6, shift=5.0)
    dit = StandInDiT()
    guided = SOLVERS["euler"](GuidedVelocity(dit, pos, neg, cfg=1.0), x, sigmas)
    assert len(dit.calls) == 6 and all(c["batch"] == 2 for c in dit.calls)
    assert all(torch.equal(c["context"], pos) for c in dit.calls)  # the negative is never run
    plain = StandInDiT()
    cond_only = SOLVERS["euler"](lambda x, s: plain(x, s * 1000.0, pos), x, sigmas)
    assert torch.equal(guided, cond_only)


def test_cfg_formula_batched_equals_two_calls():
    pos, neg = contexts()
    x, sigma = latent(), torch.full((2,), 0.7, dtype=torch.float64)
    d1, d2 = StandInDiT(), StandInDiT()
    batched = GuidedVelocity(d1, pos, neg, cfg=4.5, batched=True)(x, sigma)
    separate = GuidedVelocity(d2, pos, neg, cfg=4.5, batched=False)(x, sigma)
    assert len(d1.calls) == 1 and d1.calls[0]["batch"] == 4
    assert len(d2.calls) == 2 and all(c["batch"] == 2 for c in d2.calls)
    assert_close(batched, separate, rtol=1e-14, atol=1e-14)
    ref = StandInDiT()
    v_c, v_u = ref(x, sigma * 1000, pos), ref(x, sigma * 1000, neg)
    assert_close(batched, v_u + 4.5 * (v_c - v_u), rtol=1e-14, atol=1e-14)


def test_contexts_of_different_lengths():
    pos, neg = contexts(lp=5, ln=3)
    x, sigma = latent(), torch.full((2,), 0.4, dtype=torch.float64)
    dit = StandInDiT()
    GuidedVelocity(dit, pos, neg, cfg=3.0, batched=True)(x, sigma)
    assert [c["batch"] for c in dit.calls] == [2, 2]  # falls back to two calls
    dit = StandInDiT()
    GuidedVelocity(dit, pos, neg, cfg=3.0, batched=True, pad_context=True)(x, sigma)
    assert [c["batch"] for c in dit.calls] == [4]
    ctx = dit.calls[0]["context"]
    assert ctx.shape == (4, 5, 8) and torch.equal(ctx[2:, :3], neg) and not ctx[2:, 3:].any()


def test_per_step_guidance_schedule():
    pos, neg = contexts()
    sigmas = flow_sigmas(4, shift=1.0)  # [1, .75, .5, .25, 0]
    g = GuidedVelocity(StandInDiT(), pos, neg, cfg=[5.0, 1.0, 3.0, 2.0], sigmas=sigmas)
    # w[i] applies on (sigmas[i+1], sigmas[i]]: 0.8 is in step 0, 0.3 in step 2
    assert [g.scale_at(s) for s in (1.0, 0.75, 0.5, 0.25, 0.8, 0.3)] == [5.0, 1.0, 3.0, 2.0, 5.0, 3.0]
    dit = StandInDiT()
    SOLVERS["euler"](GuidedVelocity(dit, pos, neg, cfg=[5.0, 1.0, 3.0, 2.0], sigmas=sigmas), latent(), sigmas)
    assert [c["batch"] for c in dit.calls] == [4, 2, 4, 4]  # the w = 1 step skips the negative
    fn = GuidedVelocity(StandInDiT(), pos, neg, cfg=lambda s: 1.0 + 4.0 * s)
    assert fn.scale_at(0.5) == 3.0
    with pytest.raises(ValueError, match="one guidance scale per step"):
        GuidedVelocity(StandInDiT(), pos, neg, cfg=[1.0, 2.0], sigmas=sigmas)
    with pytest.raises(ValueError, match="sigmas"):
        GuidedVelocity(StandInDiT(), pos, neg, cfg=[1.0, 2.0])


def test_i2v_concat_and_clip_reach_both_passes():
    pos, neg = contexts()
    x, sigma = latent(c=4), torch.full((2,), 0.5, dtype=torch.float64)
    concat = latent(batch=1, c=6, seed=3)
    clip = torch.ones(1, 2, 3, dtype=torch.float64)
    dit = StandInDiT(out_channels=4)
    v = GuidedVelocity(dit, pos, neg, cfg=2.0, concat=concat, clip_fea=clip)(x, sigma)
    assert v.shape == x.shape
    assert dit.calls[0]["channels"] == 10 and dit.calls[0]["clip"].shape == (4, 2, 3)


def test_sample_cancel_and_batch_errors():
    pos, neg = contexts()
    x = latent()
    before = x.clone()
    steps = []
    with pytest.raises(SamplingCancelled):
        sample(StandInDiT(), x, flow_sigmas(5), positive=pos, negative=neg, cfg=3.0,
               callback=lambda d: steps.append(d["i"]), should_cancel=lambda: len(steps) >= 2)
    assert steps == [0, 1] and torch.equal(x, before)
    with pytest.raises(ValueError, match="batch"):
        sample(StandInDiT(), latent(batch=3), flow_sigmas(2), positive=pos)


def test_sample_denoise_noises_the_input_first():
    pos, _ = contexts()
    clean, noise = latent(seed=4), latent(seed=5)
    sigmas = flow_sigmas(3, shift=1.0, denoise=0.5)  # starts at 0.5
    dit = StandInDiT()
    out = sample(dit, noise, sigmas, positive=pos, latent=clean)
    ref = SOLVERS["euler"](lambda x, s: StandInDiT()(x, s * 1000.0, pos), 0.5 * clean + 0.5 * noise, sigmas)
    assert_close(out, ref, rtol=1e-14, atol=1e-14)
    assert dit.calls[0]["t"].tolist() == [500.0, 500.0]


def test_guidance_without_negative_is_a_clear_error():
    pos, _ = contexts()
    with pytest.raises(ValueError, match="negative"):
        GuidedVelocity(StandInDiT(), pos, None, cfg=5.0)
    g = GuidedVelocity(StandInDiT(), pos, None, cfg=lambda s: 2.0)
    with pytest.raises(ValueError, match="negative"):
        g(latent(), torch.full((2,), 0.5, dtype=torch.float64))


def test_guidance_interval_guides_above_its_sigma_and_not_at_or_below():
    w = guidance_interval(4.0, 0.7)
    assert [w(s) for s in (1.0, 0.71, 0.7, 0.3, 0.0)] == [4.0, 4.0, 1.0, 1.0, 1.0]
    assert guidance_interval(4.0, 0.0) == 4.0                  # 0: the plain scale, every step
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="cfg_until"):
            guidance_interval(3.0, bad)


def test_guidance_interval_runs_cfg_above_and_the_positive_pass_alone_below():
    """Euler over a schedule crossing the interval's sigma: the steps above it equal plain CFG
    (two contexts per call), the steps below equal cfg 1 (one call on the positive only)."""
    pos, neg = contexts()
    x = latent()
    sigmas = flow_sigmas(8, shift=1.0)                  # 1, 0.875, ..., 0.125, 0
    until = 0.5
    dit = StandInDiT()
    out = SOLVERS["euler"](GuidedVelocity(dit, pos, neg, cfg=guidance_interval(3.0, until),
                                          sigmas=sigmas), x, sigmas)
    above = int((sigmas[:-1] > until).sum())
    assert [c["batch"] for c in dit.calls] == [4] * above + [2] * (8 - above)
    split = above
    hi, lo = sigmas[:split + 1], sigmas[split:]
    mid = SOLVERS["euler"](GuidedVelocity(StandInDiT(), pos, neg, cfg=3.0), x, hi)
    ref = SOLVERS["euler"](GuidedVelocity(StandInDiT(), pos, neg, cfg=1.0), mid, lo)
    assert torch.equal(out, ref)
