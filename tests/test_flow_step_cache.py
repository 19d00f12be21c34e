"""The adaptive step cache (core/flow/step_cache.py): properties, not speed (speed and quality on
the default model: tests/benchmarks/bench_step_cache.py)."""
import math

import pytest
import torch
from torch.testing import assert_close

from core.dit.config import get_preset
from core.dit.model import WanDiT
from core.dit.random_weights import random_state_dict
from core.flow.guidance import GuidedVelocity
from core.flow.sampler import sample
from core.flow.schedules import flow_sigmas
from core.flow.solvers import SOLVERS
from core.flow.step_cache import StepCache, StepCacheConfig

MU, S = 0.5, 0.8


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact flow-matching velocity for data N(MU, S^2) (see test_flow_solvers.py)."""
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    a = 1.0 - sig
    return (sig - a * S * S) / (a * a * S * S + sig * sig) * (x - a * MU) - MU


class Recorder:
    """A velocity model that records the sigma of every call it gets."""

    def __init__(self, fn=gaussian_velocity):
        self.fn, self.sigmas = fn, []

    def __call__(self, x, sigma, **kwargs):
        self.sigmas.append(float(sigma[0]))
        return self.fn(x, sigma)


def noise(shape=(2, 3, 2, 4, 4), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny_dit():
    config = get_preset("tiny-t2v")
    dit = WanDiT(config)
    dit.load_state_dict(random_state_dict(config, seed=3))
    return dit.eval().requires_grad_(False)


class Counting:
    def __init__(self, dit):
        self.dit, self.config, self.calls = dit, dit.config, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.dit(*args, **kwargs)


def dit_inputs(dit, frames=3):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, dit.config.in_dim, frames, 4, 4, generator=gen)
    pos = torch.randn(1, 5, dit.config.text_dim, generator=gen)
    neg = torch.randn(1, 5, dit.config.text_dim, generator=gen)
    first = torch.randn(1, dit.config.out_dim, 1, 4, 4, generator=gen)
    return x, pos, neg, first


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_threshold_zero_is_bit_identical_and_skips_nothing(solver):
    x, sigmas = noise(), flow_sigmas(12, shift=3.0)
    plain = SOLVERS[solver](gaussian_velocity, x, sigmas)
    cache = StepCache(gaussian_velocity, StepCacheConfig(threshold=0.0, start=0.0, end=1.0), sigmas)
    cached = SOLVERS[solver](cache, x, sigmas)
    assert torch.equal(plain, cached)  # bit identity is the property
    assert cache.skipped == 0 and cache.computed == cache.calls > 0


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_threshold_zero_through_sample_is_bit_identical(tiny_dit, solver):
    x, pos, neg, first = dit_inputs(tiny_dit)
    sigmas = flow_sigmas(5, shift=3.0)
    kw = dict(positive=pos, negative=neg, cfg=3.0, solver=solver, first_frame=first)
    plain = sample(tiny_dit, x, sigmas, **kw)
    cached = sample(tiny_dit, x, sigmas, step_cache=StepCacheConfig(threshold=0.0), **kw)
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_large_threshold_skips_and_finishes_finite(tiny_dit, solver):
    """Every solver, with CFG and TI2V: fewer DiT calls, a finite result, frame 0 still exact."""
    x, pos, neg, first = dit_inputs(tiny_dit)
    sigmas = flow_sigmas(10, shift=3.0)
    kw = dict(positive=pos, negative=neg, cfg=3.0, solver=solver, first_frame=first)
    plain_dit, cached_dit = Counting(tiny_dit), Counting(tiny_dit)
    sample(plain_dit, x, sigmas, **kw)
    config = StepCacheConfig(threshold=1e9, start=0.0, end=1.0)
    out = sample(cached_dit, x, sigmas, step_cache=config, **kw)
    assert cached_dit.calls < plain_dit.calls
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, :1], first.to(out.dtype))  # TI2V: the given frame, bit for bit


def test_which_calls_are_always_computed():
    """With an unbounded threshold exactly the protected calls run: the first two (the rate
    needs two), the steps before `start` and from `end` on, and the last step."""
    sigmas = flow_sigmas(8, shift=2.0)
    s = sigmas.tolist()
    model = Recorder()
    SOLVERS["euler"](StepCache(model, StepCacheConfig(threshold=1e9, start=0.25, end=0.75), sigmas),
                     noise(), sigmas)
    assert model.sigmas == [s[0], s[1], s[6], s[7]]
    model = Recorder()
    config = StepCacheConfig(threshold=1e9, start=0.0, end=1.0, max_skips=2)
    SOLVERS["euler"](StepCache(model, config, sigmas), noise(), sigmas)
    assert model.sigmas == [s[0], s[1], s[4], s[7]]  # 2 skips, 1 call, 2 skips, the last step


def test_heun_second_call_counts_as_the_next_step():
    sigmas = flow_sigmas(4, shift=1.0)
    cache = StepCache(gaussian_velocity, StepCacheConfig(threshold=0.1), sigmas)
    assert [cache.step_of(v) for v in sigmas.tolist()[:-1]] == [0, 1, 2, 3]


@pytest.mark.parametrize("rule, model", [
    ("velocity", lambda x, sg: torch.full_like(x, 0.7)),                       # v constant
    ("delta", lambda x, sg: x + 0.3),                                          # v - x constant
    ("extrapolate", lambda x, sg: 0.2 + 1.5 * sg.reshape(-1, 1, 1, 1, 1).to(x.dtype)),  # affine in sigma
])
def test_each_reuse_rule_is_exact_where_its_assumption_holds(rule, model):
    sigmas = flow_sigmas(10, shift=2.0)
    recorder = Recorder(model)
    cache = StepCache(recorder, StepCacheConfig(threshold=1e9, start=0.0, end=1.0, reuse=rule), sigmas)
    x = noise()
    for sigma in sigmas.tolist()[:-1]:
        sg = torch.full((x.shape[0],), sigma, dtype=torch.float64)
        # float64 throughout: a reused value equals the model's up to a few ulps of |v| ~ 2
        assert_close(cache(x, sg), model(x, sg), rtol=0, atol=1e-12)
        x = x - 0.1 * torch.ones_like(x)
    assert cache.skipped >= 5


def test_no_state_is_shared_between_calls(tiny_dit):
    x, pos, neg, _ = dit_inputs(tiny_dit)
    x2 = torch.randn_like(x)
    sigmas = flow_sigmas(8, shift=3.0)
    config = StepCacheConfig(threshold=0.5, start=0.0, end=1.0)
    before = dict(vars(tiny_dit))
    kw = dict(positive=pos, negative=neg, cfg=3.0, solver="unipc", step_cache=config)
    first = sample(tiny_dit, x, sigmas, **kw)
    sample(tiny_dit, x2, sigmas, **kw)
    again = sample(tiny_dit, x, sigmas, **kw)
    assert torch.equal(first, again)  # the run in between left nothing behind
    assert dict(vars(tiny_dit)).keys() == before.keys()  # nothing was put on the model


def test_reset_forgets_and_switches_model():
    sigmas = flow_sigmas(10, shift=2.0)
    a, b = Recorder(), Recorder(lambda x, sg: 2.0 * gaussian_velocity(x, sg))
    cache = StepCache(a, StepCacheConfig(threshold=1e9, start=0.0, end=1.0), sigmas)
    x = noise()
    sg = [torch.full((2,), v, dtype=torch.float64) for v in sigmas.tolist()]
    for i in range(4):
        cache(x, sg[i])
    assert len(a.sigmas) == 2 and cache.skipped == 2
    cache.reset(b)  # a switch of expert: the next two calls run on the new model
    out = cache(x, sg[4])
    assert_close(out, 2.0 * gaussian_velocity(x, sg[4]), rtol=0, atol=0)
    cache(x, sg[5])
    cache(x, sg[6])
    assert len(b.sigmas) == 2 and len(a.sigmas) == 2
    assert (cache.calls, cache.computed, cache.skipped) == (7, 4, 3)


def test_a_change_of_guidance_scale_is_always_computed():
    """Per-step cfg: a cached guided velocity belongs to one w; a call at another w runs."""
    sigmas = flow_sigmas(8, shift=2.0)
    calls = []

    def dit(x, t, ctx):
        calls.append(float(t[0]) / 1000.0)
        return x * ctx.mean() + t.reshape(-1, 1, 1, 1, 1) / 1000.0

    pos, neg = torch.ones(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, 4, dtype=torch.float64)
    ws = [4.0, 4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 2.0]
    guided = GuidedVelocity(dit, pos, neg, ws, sigmas=sigmas, batched=False)
    cache = StepCache(guided, StepCacheConfig(threshold=1e9, start=0.0, end=1.0), sigmas)
    SOLVERS["euler"](cache, noise((1, 2, 1, 2, 2)), sigmas)
    s = sigmas.tolist()
    assert sorted(set(calls), reverse=True) == [s[0], s[1], s[4], s[5], s[7]]


def test_config_errors():
    for bad in (dict(threshold=-1), dict(threshold=math.nan), dict(start=0.8, end=0.2),
                dict(end=1.5), dict(reuse="taylor"), dict(max_skips=-1)):
        with pytest.raises(ValueError, match="step cache"):
            StepCacheConfig(**bad)
    assert StepCache.wrap(gaussian_velocity, None, flow_sigmas(4)) is gaussian_velocity
    off = StepCacheConfig(threshold=0)
    assert StepCache.wrap(gaussian_velocity, off, flow_sigmas(4)) is gaussian_velocity
