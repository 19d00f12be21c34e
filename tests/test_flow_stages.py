"""Several models over one schedule (Wan2.2 A14B experts): the switch rules, the routing of each
model call, and one solver run whose history survives the switch."""
import math

import pytest
import torch
from torch.testing import assert_close

from core.flow.sampler import sample, sample_stages
from core.flow.schedules import flow_sigmas
from core.flow.solvers import SOLVERS, get_solver
from core.flow.stages import (WAN22_BOUNDARY, Stage, StagedVelocity, stage_steps, step_boundary,
                              switch_step)

SHAPE = (1, 4, 3, 4, 4)


def shifted(i: int, n: int, shift: float) -> float:
    """sigma_i of an n-step schedule from 1 (DESIGN.md): shift(1 - i / n), by the formula."""
    t = 1.0 - i / n
    return shift * t / (1.0 + (shift - 1.0) * t)


@pytest.mark.parametrize("kind,steps,shift,boundary,expected", [
    ("t2v", 40, 12.0, 0.875, 26),   # official Wan2.2 T2V-A14B: 40 steps, shift 12 -> 26 on the high expert
    ("i2v", 40, 5.0, 0.900, 15),    # official Wan2.2 I2V-A14B: 40 steps, shift 5 -> 15
])
def test_boundary_rule_on_the_official_schedules(kind, steps, shift, boundary, expected):
    assert WAN22_BOUNDARY[kind] == boundary
    by_hand = sum(1 for i in range(steps) if shifted(i, steps, shift) >= boundary)
    assert by_hand == expected
    assert switch_step(flow_sigmas(steps, shift=shift), boundary) == expected


def test_step_boundary_gives_the_first_stage_exactly_k_steps():
    sigmas = flow_sigmas(4, shift=5.0)  # 1, 0.9375, 0.8333, 0.625, 0
    for k in range(0, 6):
        b = step_boundary(sigmas, k)
        assert switch_step(sigmas, b) == min(k, 4)
    assert step_boundary(sigmas, 0) == math.inf
    with pytest.raises(ValueError, match="non-negative"):
        step_boundary(sigmas, -1)


def linear_dit(a: float, b: float, calls: list | None = None, tag: str = ""):
    """A stand-in DiT dit(x, t, context) -> v = a x + b mean(context) (t recorded)."""
    def dit(x, t, context, clip_fea=None):
        if calls is not None:
            calls.append((tag, float(t.reshape(-1)[0])))
        return a * x + b * context.mean()
    return dit


def context(seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def noise(dtype=torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=dtype)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_one_model_in_two_stages_equals_one_stage(solver):
    # The history-keeping property: splitting a schedule between two stages that hold the SAME
    # model changes nothing, for multistep solvers too (two chained sampler runs would restart the
    # multistep history at the switch). Same arithmetic on both sides, so bit-identical.
    dit = linear_dit(-0.7, 0.3)
    sigmas = flow_sigmas(6, shift=3.0)
    one = sample(dit, noise(), sigmas, positive=context(1), solver=solver)
    for k in (1, 3, 5):
        two = sample_stages([Stage(dit, step_boundary(sigmas, k)), Stage(dit, 0.0)], noise(), sigmas,
                            positive=context(1), solver=solver)
        assert_close(two, one, rtol=0, atol=0)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_staged_run_equals_the_solver_on_a_switching_velocity(solver):
    # Independent reference: the plain solver on a velocity function that switches by the official
    # rule (sigma >= boundary -> high), written out here.
    high, low = linear_dit(-0.9, 0.5), linear_dit(-0.4, -0.2)
    sigmas = flow_sigmas(8, shift=5.0)
    boundary = 0.9
    pos = context(2)

    def switching(x, sigma, **_):
        s = float(sigma.reshape(-1)[0])
        return (high if s >= boundary else low)(x, sigma * 1000, pos)

    expected = get_solver(solver)(switching, noise(), sigmas)
    got = sample_stages([Stage(high, boundary), Stage(low, 0.0)], noise(), sigmas, positive=pos,
                        solver=solver)
    assert_close(got, expected, rtol=0, atol=0)  # same arithmetic: bit-identical


def test_euler_stages_equal_two_chained_runs():
    # Euler has no history: the staged run is the high model on sigmas[:k+1], then the low model
    # on sigmas[k:] (ComfyUI's two KSamplerAdvanced). dpmpp_2m differs, by design.
    high, low = linear_dit(-0.9, 0.5), linear_dit(-0.4, -0.2)
    sigmas = flow_sigmas(4, shift=5.0)
    k = 2
    stages = [Stage(high, step_boundary(sigmas, k)), Stage(low, 0.0)]
    for solver, equal in (("euler", True), ("dpmpp_2m", False)):
        staged = sample_stages(stages, noise(), sigmas, positive=context(3), solver=solver)
        mid = sample(high, noise(), sigmas[:k + 1], positive=context(3), solver=solver)
        chained = sample(low, mid, sigmas[k:], positive=context(3), solver=solver)
        if equal:
            assert_close(staged, chained, rtol=0, atol=0)
        else:
            assert (staged - chained).abs().max() > 1e-6


def test_each_call_goes_to_its_stage_and_each_stage_is_activated_once():
    calls, events = [], []
    sigmas = flow_sigmas(5, shift=5.0)
    k = 3
    stages = [Stage(linear_dit(-0.5, 0.1, calls, "high"), step_boundary(sigmas, k),
                    activate=lambda: events.append("high")),
              Stage(linear_dit(-0.3, 0.2, calls, "low"), 0.0, activate=lambda: events.append("low"))]
    # float32 sigmas, as the solvers hand float32 latents: routing must not depend on rounding.
    sample_stages(stages, noise(torch.float32), sigmas, positive=context(4, torch.float32), solver="heun")
    assert events == ["high", "low"]
    tags = [tag for tag, _ in calls]
    # heun: two calls per step, except the last step (to 0); the corrector of step k - 1 runs at
    # sigmas[k], which is already on the low-noise stage (routing is per call, by sigma).
    assert tags == ["high", "high"] * (k - 1) + ["high", "low"] + ["low", "low"] * (5 - k - 1) + ["low"]
    assert [list(r) for r in stage_steps(stages, sigmas)] == [[0, 1, 2], [3, 4]]


def test_cfg_per_stage():
    # v = v_u + w (v_c - v_u) with a different w on each stage: the staged run equals the plain
    # solver on that guided velocity written out here.
    high, low = linear_dit(-0.8, 0.6), linear_dit(-0.5, 0.4)
    pos, neg = context(5), context(6)
    sigmas = flow_sigmas(6, shift=5.0)
    boundary = 0.9

    def guided(x, sigma, **_):
        s = float(sigma.reshape(-1)[0])
        dit, w = (high, 4.0) if s >= boundary else (low, 3.0)
        vc, vu = dit(x, sigma * 1000, pos), dit(x, sigma * 1000, neg)
        return vu + w * (vc - vu)

    expected = get_solver("unipc")(guided, noise(), sigmas)
    got = sample_stages([Stage(high, boundary, cfg=4.0), Stage(low, 0.0, cfg=3.0)], noise(), sigmas,
                        positive=pos, negative=neg, solver="unipc", batched_cfg=False)
    assert_close(got, expected, rtol=1e-12, atol=1e-12)  # float64; the same ops in the same order


def test_bad_stage_lists_are_refused():
    dit = linear_dit(-0.5, 0.1)
    sigmas = flow_sigmas(4)
    with pytest.raises(ValueError, match="at least one stage"):
        sample_stages([], noise(), sigmas, positive=context(1))
    with pytest.raises(ValueError, match="high noise to low"):
        sample_stages([Stage(dit, 0.2), Stage(dit, 0.5), Stage(dit, 0.0)], noise(), sigmas, positive=context(1))
    with pytest.raises(ValueError, match="reach sigma = 0"):
        sample_stages([Stage(dit, 0.5)], noise(), sigmas, positive=context(1))
    with pytest.raises(ValueError, match="sigma_min"):
        Stage(dit, -0.1)
    with pytest.raises(ValueError, match="needs a negative"):
        sample_stages([Stage(dit, 0.5, cfg=1.0), Stage(dit, 0.0, cfg=3.0)], noise(), sigmas,
                      positive=context(1))
    with pytest.raises(ValueError, match="velocity models"):
        StagedVelocity([Stage(dit)], [], sigmas)
