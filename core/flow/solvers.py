"""ODE solvers for rectified flow, as pure functions in the k-diffusion shape.

    x = sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, *, project=None)

- `model(x, sigma, **extra_args) -> v` returns the VELOCITY v = eps - x0 (DESIGN.md), with
  x [B, C, F, H, W] (any shape with batch first) and sigma [B] (float32, float64 for float64 x).
  The data prediction a solver may need is x0 = x - sigma v (`denoised_from_velocity`).
- `sigmas` [N + 1]: decreasing, in [0, 1]; usually ending in 0 (see `schedules.flow_sigmas`). A
  schedule that stops above 0 (a split schedule) stops there.
- `callback(info)` is called once per step, after the model call and before the update, with
  info = {"i", "total", "sigma", "sigma_next", "x", "denoised"} (x and denoised at sigma). It may
  raise `SamplingCancelled` (or anything): solvers never write into the caller's tensors, so a
  cancelled run leaves its inputs untouched and returns nothing half-done.
- `disable` is accepted for k-diffusion compatibility and ignored (we draw no progress bar).
- `project(x) -> x` (keyword only, optional) is applied before the first step and after every
  step: a constraint such as the TI2V first-frame re-injection (`conditioning.FirstFrameInjection`).
- A NaN or inf in the model output raises `NonFiniteModelOutput` naming the step and sigma.

Step arithmetic: sigma coefficients are computed as Python floats (float64) and applied to x in
x's dtype. No state survives a call; every per-run value lives in the local `_Run`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch

Model = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
Project = Callable[[torch.Tensor], torch.Tensor]


class SamplingCancelled(Exception):
    """Raised (by a callback or a cancel check) to stop sampling; nothing has been written."""


class NonFiniteModelOutput(RuntimeError):
    """The model returned NaN or inf. `step` is the 0-based step index, `sigma` its noise level."""

    def __init__(self, step: int, total: int, sigma: float):
        self.step, self.total, self.sigma = step, total, sigma
        super().__init__(
            f"the model returned NaN/inf at step {step + 1}/{total} (sigma={sigma:.6g}, "
            f"t={1000 * sigma:.4g}); try bf16 or fp32 instead of fp16, a lower cfg, or check "
            f"that the model weights and inputs are sane")


def denoised_from_velocity(x: torch.Tensor, sigma: float, v: torch.Tensor) -> torch.Tensor:
    """x0 = x - sigma v (same shape as x)."""
    return x - sigma * v


def velocity_from_denoised(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """v = (x - x0) / sigma, for sigma > 0 (same shape as x)."""
    if sigma <= 0:
        raise ValueError(f"the velocity is undefined from a denoiser at sigma={sigma}; use sigma > 0")
    return (x - denoised) / sigma


def velocity_model_from_denoiser(denoiser: Model) -> Model:
    """Adapt a k-diffusion/ComfyUI-style denoiser `D(x, sigma) -> x0` (flow convention) to the
    velocity interface the solvers here call."""
    def model(x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (x - denoiser(x, sigma, **kwargs)) / s
    return model


def _check_sigmas(sigmas: torch.Tensor) -> list[float]:
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    if torch.as_tensor(sigmas).ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values, got shape {tuple(torch.as_tensor(sigmas).shape)}")
    vals = s.tolist()
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"sigmas must lie in [0, 1] (flow matching: 1 = noise), got {vals}")
    if any(b >= a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"sigmas must be strictly decreasing, got {vals}")
    return vals


def _lam(sigma: float) -> float:
    """Half log-SNR of the flow path, lambda = log((1 - sigma) / sigma); -inf at 1, +inf at 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log1p(-sigma) - math.log(sigma)


class _Run:
    """Per-call plumbing shared by the solvers: model calls with the finiteness check, callback,
    projection. Created inside each solver call and dropped at its end."""

    def __init__(self, model: Model, x: torch.Tensor, sigmas: torch.Tensor,
                 extra_args: dict | None, callback: Callback | None, project: Project | None):
        if not torch.is_tensor(x) or x.ndim < 1:
            raise TypeError(f"x must be a tensor with a batch dimension, got {type(x).__name__}")
        self.model, self.extra = model, dict(extra_args or {})
        self.callback, self.project = callback, project
        self.s = _check_sigmas(sigmas)
        self.n = len(self.s) - 1
        self.batch = x.shape[0]
        self.s_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.device = x.device

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) if self.project is not None else x

    def end_step(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) if self.project is not None else x

    def velocity(self, x: torch.Tensor, i: int, sigma: float) -> torch.Tensor:
        sigma_b = torch.full((self.batch,), sigma, dtype=self.s_dtype, device=self.device)  # [B]
        v = self.model(x, sigma_b, **self.extra)
        if v.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(v.shape)} for input {tuple(x.shape)}: "
                             f"it must return a velocity shaped like x")
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteModelOutput(i, self.n, sigma)
        return v.to(x.dtype)

    def report(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback({"i": i, "total": self.n, "sigma": self.s[i], "sigma_next": self.s[i + 1],
                           "x": x, "denoised": denoised})


def sample_euler(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None, *,
                 project: Project | None = None) -> torch.Tensor:
    """Euler's method x += (sigma' - sigma) v (rectified flow, Liu et al. 2022, Eq. 8 convention)."""
    run = _Run(model, x, sigmas, extra_args, callback, project)
    x = run.start(x)
    for i in range(run.n):
        s, s_next = run.s[i], run.s[i + 1]
        v = run.velocity(x, i, s)
        run.report(i, x, denoised_from_velocity(x, s, v))
        x = run.end_step(x + (s_next - s) * v)
    return x


def sample_heun(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None, *,
                project: Project | None = None) -> torch.Tensor:
    """Heun's 2nd-order method (trapezoidal corrector; Karras et al. 2022, Alg. 1); a final step
    to sigma = 0 is an Euler step, as in k-diffusion, so the model is never called at t = 0."""
    run = _Run(model, x, sigmas, extra_args, callback, project)
    x = run.start(x)
    for i in range(run.n):
        s, s_next = run.s[i], run.s[i + 1]
        dt = s_next - s
        v = run.velocity(x, i, s)
        run.report(i, x, denoised_from_velocity(x, s, v))
        if s_next == 0.0:
            x = x + dt * v
        else:
            v_next = run.velocity(x + dt * v, i, s_next)
            x = x + dt * 0.5 * (v + v_next)
        x = run.end_step(x)
    return x


def _first_order_coeffs(s: float, t: float) -> tuple[float, float]:
    """The exact-linear-part first-order step in data-prediction form (DDIM / DPM-Solver++ 1):
    x_t = a x_s + b x0_s with a = sigma_t / sigma_s, b = -alpha_t expm1(-h), alpha = 1 - sigma,
    h = lambda_t - lambda_s. At sigma_s = 1 this is the Euler step (a = sigma_t, b = 1 - sigma_t)
    and at sigma_t = 0 it returns x0_s."""
    if t == 0.0:
        return 0.0, 1.0
    if s == 1.0:
        return t, 1.0 - t
    h = _lam(t) - _lam(s)
    return t / s, -(1.0 - t) * math.expm1(-h)


def sample_dpmpp_2m(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None, *,
                    project: Project | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep 2nd order in data prediction (Lu et al. 2022), flow form
    (alpha = 1 - sigma, lambda = log(alpha / sigma)).

    Lower order where the multistep difference is unusable: the first step, a step whose previous
    point is sigma = 1 (lambda = -inf, so the ratio r is infinite and the 2nd-order term vanishes
    anyway) and the last step to sigma = 0 (which returns x0 exactly, as k-diffusion does).
    """
    run = _Run(model, x, sigmas, extra_args, callback, project)
    x = run.start(x)
    old_denoised: torch.Tensor | None = None
    for i in range(run.n):
        s, t = run.s[i], run.s[i + 1]
        v = run.velocity(x, i, s)
        denoised = denoised_from_velocity(x, s, v)
        run.report(i, x, denoised)
        a, b = _first_order_coeffs(s, t)
        d = denoised
        if old_denoised is not None and t > 0.0 and run.s[i - 1] < 1.0:
            h = _lam(t) - _lam(s)
            r = (_lam(s) - _lam(run.s[i - 1])) / h
            d = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * old_denoised
        x = run.end_step(a * x + b * d)
        old_denoised = denoised
    return x


def _unipc_update(x: torch.Tensor, s0: float, t: float, m0: torch.Tensor,
                  prev: tuple[float, torch.Tensor] | None, order: int,
                  m_t: torch.Tensor | None) -> torch.Tensor:
    """One UniPC bh2 update in data prediction from (x at s0, x0 estimate m0) to t.

    Predictor (m_t None): UniP of `order` (1 or 2) with the previous point `prev` = (sigma, x0).
    Corrector (m_t given, the x0 estimate at t): UniC of `order`, which adds m_t as one more node.
    Follows Zhao et al. 2023 (UniPC), variant B(h) = expm1(-h) as in Wan's
    FlowUniPCMultistepScheduler, and its closed forms for order <= 2.
    """
    if t == 0.0:  # the limit h -> inf of every update: x0 itself (only order 1 reaches here)
        return m0
    a, b = _first_order_coeffs(s0, t)
    x_t = a * x + b * m0  # = sigma_t / sigma_s0 x - alpha_t h_phi_1 m0
    if order == 1 and m_t is None:
        return x_t
    alpha_t = 1.0 - t
    h = _lam(t) - _lam(s0)
    hh = -h
    b_h = math.expm1(hh)  # bh2
    if m_t is not None and order == 1:
        return x_t - alpha_t * b_h * 0.5 * (m_t - m0)
    assert prev is not None and order == 2, (order, prev is None)
    s_prev, m_prev = prev
    r1 = (_lam(s_prev) - _lam(s0)) / h  # < 0: the previous node lies behind s0
    d1 = (m_prev - m0) / r1
    if m_t is None:  # UniP-2: rho = 1/2 (the simplified order-2 predictor)
        return x_t - alpha_t * b_h * 0.5 * d1
    # UniC-2: nodes (r1, 1); solve [[1, 1], [r1, 1]] rho = (g1, g2) by hand.
    h_phi_k = math.expm1(hh) / hh - 1.0
    g1 = h_phi_k / b_h
    h_phi_k = h_phi_k / hh - 0.5
    g2 = h_phi_k * 2.0 / b_h
    rho1 = (g1 - g2) / (1.0 - r1)
    rho2 = g1 - rho1
    return x_t - alpha_t * b_h * (rho1 * d1 + rho2 * (m_t - m0))


def sample_unipc(model: Model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None, *,
                 project: Project | None = None, lower_order_final: bool = True) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), bh2, order 2, with the UniC corrector: the flow form of Wan's
    FlowUniPCMultistepScheduler (predict x0, lower order at the first and the last step).

    Each step: evaluate x0 at x_i, correct x_i with UniC (reusing that evaluation, no extra model
    call), then predict x_{i+1} with UniP. A history point at sigma = 1 (lambda = -inf) carries no
    usable difference, so the step after it runs at order 1 (Wan's own table starts just below 1
    and never meets this). The last step to sigma = 0 returns x0, as Wan's does.
    `lower_order_final` (Wan's default True) runs the last step at order 1; False keeps order 2
    there when the schedule stops above 0 (a step to sigma = 0 is always x0).
    """
    run = _Run(model, x, sigmas, extra_args, callback, project)
    x = run.start(x)
    prev_x: torch.Tensor | None = None  # x_{i-1}, the point the last predictor started from
    hist: list[tuple[float, torch.Tensor]] = []  # (sigma, x0) of the last two points
    last_order = 1
    for i in range(run.n):
        s, t = run.s[i], run.s[i + 1]
        v = run.velocity(x, i, s)
        m = denoised_from_velocity(x, s, v)
        run.report(i, x, m)  # the pair the model saw, before the correction moves x
        if prev_x is not None:  # UniC: correct x_i with the new evaluation
            s_prev, m_prev = hist[-1]
            older = hist[-2] if last_order == 2 else None
            x = run.end_step(_unipc_update(prev_x, s_prev, s, m_prev, older, last_order, m))
        hist = (hist + [(s, m)])[-2:]
        last_step = i == run.n - 1 and (lower_order_final or t == 0.0)
        order = 2 if (i >= 1 and not last_step and hist[0][0] < 1.0) else 1
        prev_x = x
        x = run.end_step(_unipc_update(x, s, t, m, hist[0] if order == 2 else None, order, None))
        last_order = order
    return x


SOLVERS: MappingProxyType[str, Callable[..., torch.Tensor]] = MappingProxyType({
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "unipc": sample_unipc,
})


def get_solver(name: str) -> Callable[..., torch.Tensor]:
    """The solver registered under `name` (see SOLVERS)."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None
