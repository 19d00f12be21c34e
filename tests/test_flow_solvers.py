"""Solvers on a problem with a closed-form answer, plus their error handling.

Closed form. Let the data be x0 ~ N(mu, s^2) (independently per element) and eps ~ N(0, 1).
With a = 1 - sigma, x_sigma = a x0 + sigma eps is Gaussian with

    mean  a mu,    variance  V(sigma) = a^2 s^2 + sigma^2,
    Cov(x0, x_sigma) = a s^2,   Cov(eps, x_sigma) = sigma.

Gaussian conditioning gives E[x0 | x] = mu + (a s^2 / V)(x - a mu) and E[eps | x] = (sigma / V)(x - a mu),
so the exact flow-matching velocity E[eps - x0 | x_sigma = x] is

    v(x, sigma) = ((sigma - a s^2) / V) (x - a mu) - mu.

Exact flow map. Try x(sigma) = a mu + sqrt(V) z with z fixed: dx/dsigma = -mu + V' / (2 sqrt V) z
with V' = 2 sigma - 2 a s^2, i.e. -mu + ((sigma - a s^2) / V)(x - a mu) = v(x, sigma). So the ODE
solution is affine in its start; from sigma = 1 (a = 0, V = 1, z = x(1) = eps) to sigma = 0 it is

    x(0) = mu + s eps,

which is N(mu, s^2) exactly. The tests below integrate v with each solver from x(1) = eps and
compare with mu + s eps; nothing is compared with numbers produced by the code itself.
"""
import math

import pytest
import torch
from torch.testing import assert_close

from core.flow.schedules import flow_sigmas
from core.flow.solvers import (SOLVERS, NonFiniteModelOutput, SamplingCancelled, get_solver,
                               velocity_model_from_denoiser)

MU, S = 0.5, 0.8  # data mean and standard deviation of the closed-form problem


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor, mu: float = MU, s: float = S) -> torch.Tensor:
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    a = 1.0 - sig
    var = a * a * s * s + sig * sig
    return (sig - a * s * s) / var * (x - a * mu) - mu


def standard_eps(shape=(2, 3, 2, 4, 4)) -> torch.Tensor:
    """Deterministic 'noise' with sample mean exactly 0 and variance exactly 1."""
    e = torch.linspace(-2.5, 2.5, math.prod(shape), dtype=torch.float64)
    e = e[torch.randperm(e.numel(), generator=torch.Generator().manual_seed(0))]
    e = (e - e.mean()) / e.std(unbiased=False)
    return e.reshape(shape)


def final_error(name: str, steps: int, shift: float = 1.0) -> float:
    eps = standard_eps()
    out = SOLVERS[name](gaussian_velocity, eps, flow_sigmas(steps, shift=shift))
    return (out - (MU + S * eps)).abs().max().item()


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_samples_converge_to_the_data_distribution(name):
    eps = standard_eps()
    tol = {"euler": 0.02}.get(name, 2e-3)
    errors = []
    for steps in (8, 32, 256):
        out = SOLVERS[name](gaussian_velocity, eps, flow_sigmas(steps, shift=5.0))
        assert out.dtype == torch.float64 and out.shape == eps.shape
        errors.append(max(abs(out.mean().item() - MU), abs(out.var(unbiased=False).item() - S * S)))
    # (not necessarily monotone: with shift 5 the 2nd-order solvers' error changes sign near
    # 32 steps, so it can dip there) -> the coarse run is far off, the fine one is close
    assert errors[-1] < 0.05 * errors[0], errors
    assert errors[-1] < tol, errors


# Expected order p: error ~ C N^-p. Euler is 1st order, the others 2nd. DPM++(2M) works in
# lambda = log((1 - sigma) / sigma), where a sigma-uniform grid takes lambda steps ~1/k at the k-th
# step from sigma = 1 (not O(1/N)); its error is ~(c1 + c2 log N) / N^2, so the fitted slope
# creeps up to 2 (about 1.8 over 64..512). The bounds say "first" vs "second order", no more.
ORDER_BOUNDS = {"euler": (0.9, 1.1), "heun": (1.9, 2.1), "dpmpp_2m": (1.7, 2.3), "unipc": (1.85, 2.3)}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_measured_convergence_order(name):
    steps = [64, 128, 256, 512]
    errors = [final_error(name, n) for n in steps]
    xs = torch.log(torch.tensor(steps, dtype=torch.float64))
    ys = torch.log(torch.tensor(errors, dtype=torch.float64))
    slope = -(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()).item()
    low, high = ORDER_BOUNDS[name]
    assert low <= slope <= high, f"{name}: order {slope:.3f}, errors {errors}"


def test_single_step_is_exact_for_a_point_mass():
    # s = 0: all data at mu, v = (x - mu) / sigma - ... ; every solver lands on mu from anywhere.
    eps = standard_eps()
    for name, solver in SOLVERS.items():
        out = solver(lambda x, sg: gaussian_velocity(x, sg, s=0.0), eps, flow_sigmas(3, shift=2.0))
        assert_close(out, torch.full_like(eps, MU), rtol=0, atol=1e-12, msg=name)


def test_denoiser_adapter_round_trip():
    den = lambda x, sg: x - sg.reshape(-1, 1) * gaussian_velocity(x, sg)  # x0 = x - sigma v
    eps = standard_eps((4, 8))
    sig = flow_sigmas(6, shift=3.0)
    assert_close(SOLVERS["euler"](velocity_model_from_denoiser(den), eps, sig),
                 SOLVERS["euler"](gaussian_velocity, eps, sig), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_callback_each_step_and_inputs_untouched(name):
    eps = standard_eps((1, 2, 1, 2, 2))
    before = eps.clone()
    sigmas = flow_sigmas(5, shift=5.0)
    seen = []
    SOLVERS[name](gaussian_velocity, eps, sigmas, callback=lambda d: seen.append(d))
    assert [d["i"] for d in seen] == list(range(5))
    assert [d["sigma"] for d in seen] == sigmas[:-1].tolist()
    assert [d["sigma_next"] for d in seen] == sigmas[1:].tolist()
    assert all(d["total"] == 5 and d["x"].shape == eps.shape for d in seen)
    # denoised = x - sigma v at the reported x
    d0 = seen[2]
    sg = torch.full((1,), d0["sigma"], dtype=torch.float64)
    assert_close(d0["denoised"], d0["x"] - d0["sigma"] * gaussian_velocity(d0["x"], sg))
    assert torch.equal(eps, before)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_cancel_raises_and_leaves_inputs(name):
    eps = standard_eps((1, 2, 1, 2, 2))
    before = eps.clone()

    def cancel_at_two(info):
        if info["i"] == 2:
            raise SamplingCancelled("user pressed cancel")
    with pytest.raises(SamplingCancelled):
        SOLVERS[name](gaussian_velocity, eps, flow_sigmas(6), callback=cancel_at_two)
    assert torch.equal(eps, before)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_nan_names_step_and_sigma(name):
    sigmas = flow_sigmas(6, shift=5.0)
    bad_sigma = sigmas[3].item()

    def model(x, sg):
        v = gaussian_velocity(x, sg)
        return v * float("nan") if abs(sg[0].item() - bad_sigma) < 1e-12 else v
    with pytest.raises(NonFiniteModelOutput) as err:
        SOLVERS[name](model, standard_eps((1, 4)), sigmas)
    # Heun evaluates sigma_3 already as the end of step 2.
    assert err.value.step == (2 if name == "heun" else 3)
    assert err.value.sigma == pytest.approx(bad_sigma)
    assert isinstance(err.value, RuntimeError)
    assert f"step {err.value.step + 1}/6" in str(err.value) and f"{bad_sigma:.6g}" in str(err.value)


def test_model_sees_sigma_batch_and_extra_args():
    calls = []

    def model(x, sg, scale=1.0):
        calls.append((sg.shape, sg.dtype, scale))
        return torch.zeros_like(x)
    SOLVERS["euler"](model, torch.zeros(3, 2, dtype=torch.bfloat16), flow_sigmas(2),
                     extra_args={"scale": 2.0})
    assert calls == [((3,), torch.float32, 2.0)] * 2


def test_split_schedule_stops_above_zero_and_bad_sigmas():
    eps = standard_eps((1, 8))
    full = flow_sigmas(8, shift=1.0)
    # running the two halves of a schedule equals running it whole (Euler is one-step)
    half = SOLVERS["euler"](gaussian_velocity, SOLVERS["euler"](gaussian_velocity, eps, full[:5]), full[4:])
    assert_close(half, SOLVERS["euler"](gaussian_velocity, eps, full), rtol=0, atol=1e-14)
    for bad in (torch.tensor([0.5, 0.7, 0.0]), torch.tensor([1.5, 0.0]), torch.tensor([1.0])):
        with pytest.raises(ValueError):
            SOLVERS["euler"](gaussian_velocity, eps, bad)
    with pytest.raises(ValueError, match="unknown solver"):
        get_solver("ddim")


def test_unipc_corrector_lifts_the_order_to_three():
    # A schedule from 0.9 to 0.1 (no sigma = 1, no step to 0). Exact end point from the flow map:
    # x(b) = a_b mu + sqrt(V_b / V_a) (x(a) - a_a mu). UniP-2 + UniC-2 is 3rd order (Zhao et al.
    # 2023, Thm 3.3) when the last step keeps order 2; Wan's lower-order final step caps it at 2.
    def var(sg):
        return (1 - sg) ** 2 * S * S + sg * sg
    start, stop = 0.9, 0.1
    x_a = standard_eps((1, 41))
    exact = (1 - stop) * MU + math.sqrt(var(stop) / var(start)) * (x_a - (1 - start) * MU)

    def slope(**kw):
        steps = [32, 64, 128, 256]
        errs = [(SOLVERS["unipc"](gaussian_velocity, x_a, torch.linspace(start, stop, n + 1,
                 dtype=torch.float64), **kw) - exact).abs().max().item() for n in steps]
        return math.log(errs[0] / errs[-1]) / math.log(steps[-1] / steps[0])
    assert 2.8 <= slope(lower_order_final=False) <= 3.2
    assert 1.6 <= slope() <= 2.2
