"""The flow-matching loss against the formulas of DESIGN.md, computed here independently.

A stand-in model records what it is fed (x_sigma, t) and returns a known velocity, so sigma and
eps can be recovered from its input and the weighted MSE checked by hand. float64 throughout."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.train import drop_condition, flow_matching_loss
from core.flow import training_table


class Recorder(nn.Module):
    """v = 0.5 x + 0.25 (any fixed function of the input); remembers x and t."""

    def __init__(self, patch_size=(1, 2, 2)):
        super().__init__()
        self.config = SimpleNamespace(patch_size=patch_size)
        self.calls = []

    def forward(self, x, t, context, clip_fea=None):
        self.calls.append((x.clone(), t.clone(), context, clip_fea))
        return 0.5 * x + 0.25


def reference_table(n=1000, k=5.0):
    """Seed 001's training table, written out here: shifted linspace sigmas, bell weights."""
    s = torch.linspace(1, 0, n + 1, dtype=torch.float64)[:-1]
    sigmas = k * s / (1 + (k - 1) * s)
    t = 1000 * sigmas
    y = torch.exp(-2 * ((t - 500) / 1000) ** 2)
    y = y - y.min()
    return sigmas, y * (n / y.sum())


def recover(x0, x_t, t):
    """sigma [B] and eps from x_sigma = (1 - sigma) x0 + sigma eps."""
    sigma = t.double() / 1000
    s = sigma.view(-1, 1, 1, 1, 1)
    return sigma, (x_t - (1 - s) * x0) / s


def data(b=3, c=4, f=3, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, f, h, w, generator=g, dtype=torch.float64),
            torch.randn(b, 5, 8, generator=g, dtype=torch.float64))


def test_table_mode_matches_hand_computed_weighted_mse():
    x0, ctx = data()
    model = Recorder()
    loss, info = flow_matching_loss(model, x0, ctx, generator=torch.Generator().manual_seed(1))
    x_t, t, seen_ctx, _ = model.calls[0]
    assert seen_ctx is ctx and t.shape == (3,)
    sigma, eps = recover(x0, x_t, t)
    ref_sigmas, ref_weights = reference_table()
    idx = (ref_sigmas[None] - sigma[:, None]).abs().argmin(1)
    # t is float32 on the model side, so sigma is known to float32 precision only.
    torch.testing.assert_close(sigma, ref_sigmas[idx], rtol=0, atol=1e-6)
    torch.testing.assert_close(info["sigma"], ref_sigmas[idx], rtol=0, atol=0)
    torch.testing.assert_close(info["weight"], ref_weights[idx], rtol=1e-12, atol=1e-12)
    # eps is standard normal noise: mean ~0, std ~1 over the 192 values.
    assert abs(float(eps.mean())) < 0.3 and abs(float(eps.std()) - 1) < 0.3
    v = 0.5 * x_t + 0.25
    mse = ((v - (eps - x0)) ** 2).mean(dim=(1, 2, 3, 4))
    expected = (ref_weights[idx] * mse).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-9)


def test_logit_normal_unweighted_and_distribution():
    x0, ctx = data(b=4000, c=1, f=1, h=2, w=2)
    model = Recorder()
    loss, info = flow_matching_loss(model, x0, ctx, generator=torch.Generator().manual_seed(2),
                                    sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    assert torch.equal(info["weight"], torch.ones(4000, dtype=torch.float64))
    logit = torch.logit(info["sigma"])
    assert abs(float(logit.mean()) - 0.5) < 0.05 and abs(float(logit.std()) - 0.8) < 0.05
    x_t, t, _, _ = model.calls[0]
    _, eps = recover(x0, x_t, t)
    mse = ((0.5 * x_t + 0.25 - (eps - x0)) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(loss.double(), mse.mean(), rtol=1e-5, atol=1e-8)
    # weighted=True applies the bell curve at t = 1000 sigma, normalised over the table.
    _, info_w = flow_matching_loss(Recorder(), x0[:8], ctx[:8], sampling="logit_normal",
                                   weighted=True, generator=torch.Generator().manual_seed(3))
    y = torch.exp(-2 * ((info_w["sigma"] * 1000 - 500) / 1000) ** 2)
    tab = torch.exp(-2 * ((training_table().timesteps - 500) / 1000) ** 2)
    torch.testing.assert_close(info_w["weight"], (y - tab.min()) * 1000 / (tab - tab.min()).sum())


def test_ti2v_first_frame_clean_t0_and_excluded():
    x0, ctx = data(b=8, f=3)
    model = Recorder(patch_size=(1, 2, 2))
    loss, info = flow_matching_loss(model, x0, ctx, generator=torch.Generator().manual_seed(4),
                                    first_frame_prob=0.5)
    first = info["first_frame"]
    assert 0 < int(first.sum()) < 8, "seed chosen so that both kinds of sample occur"
    x_t, t, _, _ = model.calls[0]
    per_frame = (4 // 2) * (4 // 2)                                      # tokens per latent frame
    assert t.shape == (8, 3 * per_frame)
    sigma = info["sigma"]
    for b in range(8):
        ts = float(sigma[b]) * 1000
        if first[b]:
            assert torch.equal(x_t[b, :, 0], x0[b, :, 0])                # frame 0 kept clean
            assert torch.all(t[b, :per_frame] == 0)                      # its tokens see t = 0
        else:
            assert torch.all((t[b, :per_frame] - ts).abs() < 1e-3)
        assert torch.all((t[b, per_frame:] - ts).abs() < 1e-3)          # f-major: frames 1.. noisy
    # Loss by hand: frame 0 of the clean samples contributes nothing (its recovered "eps" is
    # meaningless there, which is fine since it is left out).
    s = sigma.view(-1, 1, 1, 1, 1)
    eps = (x_t - (1 - s) * x0) / s
    sq = (0.5 * x_t + 0.25 - (eps - x0)) ** 2
    per = torch.stack([sq[b, :, 1:].mean() if first[b] else sq[b].mean() for b in range(8)])
    torch.testing.assert_close(loss.double(), (info["weight"] * per).mean(), rtol=1e-6, atol=1e-9)


def test_ti2v_frame0_error_does_not_reach_the_loss():
    class Frame0Liar(Recorder):
        def forward(self, x, t, context, clip_fea=None):
            v = super().forward(x, t, context, clip_fea)
            v[:, :, 0] = 1e6
            return v

    x0, ctx = data(b=2)
    loss, _ = flow_matching_loss(Frame0Liar(), x0, ctx, generator=torch.Generator().manual_seed(5),
                                 first_frame_prob=1.0)
    assert float(loss) < 1e3


def test_concat_and_clip_fea_reach_the_model():
    x0, ctx = data(b=2, c=4)
    extra = torch.zeros(2, 3, 3, 4, 4, dtype=torch.float64)
    clip = torch.ones(2, 7, 6, dtype=torch.float64)

    class I2V(Recorder):
        def forward(self, x, t, context, clip_fea=None):
            super().forward(x, t, context, clip_fea)
            return x[:, :4]

    model = I2V()
    flow_matching_loss(model, x0, ctx, generator=torch.Generator().manual_seed(6), concat=extra,
                       clip_fea=clip)
    x_in, _, _, seen_clip = model.calls[0]
    assert x_in.shape[1] == 7 and torch.equal(x_in[:, 4:], extra) and seen_clip is clip


def test_user_errors():
    x0, ctx = data(b=2, f=1)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="sampling"):
        flow_matching_loss(Recorder(), x0, ctx, generator=g, sampling="uniform")
    with pytest.raises(ValueError, match="at least 2 latent"):
        flow_matching_loss(Recorder(), x0, ctx, generator=g, first_frame_prob=0.5)
    with pytest.raises(ValueError, match="first_frame_prob"):
        flow_matching_loss(Recorder(), x0, ctx, generator=g, first_frame_prob=2)
    with pytest.raises(ValueError, match="latent video"):
        flow_matching_loss(Recorder(), x0[0], ctx, generator=g)
    x0, ctx = data(b=2, f=2)
    with pytest.raises(TypeError, match="patch size"):
        flow_matching_loss(lambda x, t, c: x, x0, ctx, generator=g, first_frame_prob=1.0)


def test_drop_condition():
    ctx = torch.randn(64, 5, 8)
    null = torch.zeros(5, 8)
    g = torch.Generator().manual_seed(0)
    assert drop_condition(ctx, null, 0.0, g) is ctx
    assert torch.equal(drop_condition(ctx, null, 1.0, g), torch.zeros_like(ctx))
    out = drop_condition(ctx, null, 0.5, torch.Generator().manual_seed(1))
    dropped = (out == 0).all(dim=(1, 2))
    kept = (out == ctx).all(dim=(1, 2))
    assert torch.all(dropped ^ kept) and 10 < int(dropped.sum()) < 54
    with pytest.raises(ValueError, match="same number of tokens"):
        drop_condition(ctx, torch.zeros(4, 8), 0.5, g)
    with pytest.raises(ValueError, match="probability"):
        drop_condition(ctx, null, 1.5, g)
