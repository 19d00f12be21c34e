"""Adaptive step caching: skip DiT calls whose output is predictable from the last computed one.

    cache = StepCache(model, StepCacheConfig(threshold=0.1), sigmas)
    x = sample_unipc(cache, x, sigmas)           # any solver; cache.computed / cache.skipped

`StepCache` wraps the velocity model the solvers call, `model(x, sigma, **kwargs) -> v` (see
`solvers`), and decides at every call whether to run it or to reuse the last computed
*transformation* Delta = v_c - x_c (output minus input of the last computed call c):

    v ~ x + Delta                                          (reuse="delta", EasyCache's choice)
    v ~ v_c                                                (reuse="velocity")

The decision follows EasyCache (Zhou et al. 2025, "Less is Enough: Training-Free Video Diffusion
Acceleration via Runtime-Adaptive Caching", arXiv:2507.02860). Its observation: the ratio
k = |v_c - v_c'| / |x_c - x_c'| between the output change and the input change of two computed
calls (the "transformation rate"; |.| the mean absolute value) is stable over the middle of a
schedule, so the relative output change of a later call j can be predicted from its input change
alone, eps_j = k |x_j - x_{j-1}| / |v_c|, without running the model. The predictions are summed
from the last computed call on; while the sum stays below `threshold`, the call is skipped, and
the first call where it does not is computed and restarts the sum. The relatives:
- TeaCache (Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
  Model", arXiv:2411.19108) sums the relative L1 change of the timestep-modulated input of the
  first block, rescaled by a polynomial fitted offline per model, and reuses the residual of the
  block stack (needs the DiT's insides and a per-model fit);
- MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache",
  arXiv:2506.09045) sums |1 - gamma| of a magnitude ratio gamma of successive residuals, taken
  from one calibration run per model, with a cap K on consecutive skips.
Here the criterion is EasyCache's, because it needs neither the model's insides nor a calibration
(it must hold for any Wan checkpoint, and for our own tiny one), with MagCache's cap on
consecutive skips as an option (`max_skips`). The reuse rule and the defaults were chosen by
measurement on the pack's default model (tests/benchmarks/bench_step_cache.py): on 16 held-out
clips (euler, 20 steps) "velocity" and "delta" skip the same calls and differ by 0.4-1.0 dB
(velocity ahead: in rectified flow v = eps - x0 is what stays nearly constant along a path); on 8
clips "extrapolate" was 3.5-7.5 dB better at thresholds 0.1-0.2 but its worst clips were worse at
0.4-0.6, and the criterion does not know that it extrapolates (it skips no more calls). Threshold 0.4
with start 0.1 / end 0.9 halves the DiT forwards at 20 steps at ~33 dB mean PSNR (README).

Where it sits: around the guided velocity (CFG outside the cache's inner model), inside the TI2V
first-frame wrapper. Caching the CFG combination is exactly caching the conditional and the
unconditional pass separately with one shared decision: with Delta_c = v_c - x and
Delta_u = v_u - x, (x + Delta_u) + w ((x + Delta_c) - (x + Delta_u)) = x + (v_guided - x). So one
tensor is kept instead of two, both passes are skipped together (they can never drift apart), and
the only thing per-branch caching could do better, recombining with a different w, is handled by
computing every call whose guidance scale differs from the cached one (`scale_at` of the inner
model, when it has one: `guidance.GuidedVelocity`). Inside the TI2V wrapper the cache sees the
injected input and passes the per-token `timestep=` through; the wrapper then zeroes the cached
first-frame velocity like a computed one, so frame 0 stays exact.

What is always computed: every call while fewer than two have been (k needs two), every call in
the first `start` fraction of the steps and from the `end` fraction on, the last step, a call
whose guidance scale differs from the cached call's (and the one after it: the rate is measured
anew under the new scale), and (with `max_skips`) the call after that
many skips in a row. A call's step is the number of schedule sigmas above its sigma, so Heun's
second call at sigma_{i+1} counts as step i + 1. With threshold 0 nothing is skipped and every
output is the inner model's own tensor (bit-identical to running without the cache).

State: per object, created per sampling call; nothing is stored on the wrapped model. A
two-expert sampler calls `reset(new_model)` on a switch of expert (the cached transformation
belongs to the old expert).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Model = Callable[..., torch.Tensor]
REUSE_RULES = ("delta", "velocity", "extrapolate")


@dataclass(frozen=True)
class StepCacheConfig:
    """How aggressively to skip model calls (see the module docstring). Holds no state."""
    threshold: float = 0.4     # summed predicted relative output change before a call runs; 0 = off
    start: float = 0.1         # fraction of the steps always computed at the start (high noise)
    end: float = 0.9           # steps from this fraction on are always computed (and the last step)
    reuse: str = "velocity"    # "velocity": v = v_c; "delta": v = x + (v_c - x_c) (EasyCache);
                               # "extrapolate": v linear in sigma through the last two computed
    max_skips: int = 0         # most skipped calls in a row (MagCache's K); 0 = no cap

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
                and self.threshold >= 0):
            raise ValueError(f"step cache threshold must be a number >= 0 (0 = off), "
                             f"got {self.threshold!r}")
        if not 0.0 <= self.start <= 1.0 or not 0.0 <= self.end <= 1.0:
            raise ValueError(f"step cache start/end are fractions of the steps in [0, 1], got "
                             f"start={self.start}, end={self.end}")
        if self.start > self.end:
            raise ValueError(f"step cache start ({self.start}) must not be after end ({self.end}); "
                             f"steps between them may be skipped")
        if self.reuse not in REUSE_RULES:
            raise ValueError(f"step cache reuse must be one of {REUSE_RULES}, got {self.reuse!r}")
        if not isinstance(self.max_skips, int) or self.max_skips < 0:
            raise ValueError(f"step cache max_skips must be an integer >= 0 (0 = no cap), "
                             f"got {self.max_skips!r}")

    @property
    def enabled(self) -> bool:
        return self.threshold > 0.0


def _mean_abs(t: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute value: [B, ...] -> [B] (float32 or wider)."""
    return t.flatten(1).abs().to(torch.promote_types(t.dtype, torch.float32)).mean(dim=1)


class StepCache:
    """The velocity model `model` with adaptive step caching; call it like `model`.

    sigmas [N + 1]: the schedule the solver runs (for the step of each call). Counters:
    `calls`, `computed`, `skipped` (calls of this object; a computed call is one call of `model`,
    i.e. one DiT forward per CFG pass).
    """

    def __init__(self, model: Model, config: StepCacheConfig, sigmas: torch.Tensor):
        self.model, self.config = model, config
        self.sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1).tolist()
        self.n = max(len(self.sigmas) - 1, 1)
        self.calls = self.computed = self.skipped = 0
        self.reset()

    @staticmethod
    def wrap(model: Model, config: StepCacheConfig | None, sigmas: torch.Tensor) -> Model:
        """`model` itself when `config` is None or off (threshold 0), else a new StepCache."""
        if config is None or not config.enabled:
            return model
        return StepCache(model, config, sigmas)

    def reset(self, model: Model | None = None) -> None:
        """Forget everything cached (and wrap `model` from now on, when given): the next calls
        are computed until the transformation rate is known again. Counters are kept."""
        if model is not None:
            self.model = model
        self._x_prev: torch.Tensor | None = None   # input of the previous call (computed or not)
        self._x_c: torch.Tensor | None = None      # input of the last computed call
        self._v_c: torch.Tensor | None = None      # its output
        self._s_c: float | None = None             # its sigma
        self._older: tuple[float, torch.Tensor] | None = None  # (sigma, v) of the computed call
                                                    # before, at another sigma (for "extrapolate")
        self._v_norm: torch.Tensor | None = None   # [B] mean |v_c|
        self._rate: torch.Tensor | None = None     # [B] transformation rate k
        self._scale: float | None = None           # guidance scale of the last computed call
        self._acc: torch.Tensor | None = None      # [B] summed predicted relative output change
        self._run = 0                              # skips in a row

    def step_of(self, sigma: float) -> int:
        """The schedule step of a call at `sigma`: how many schedule sigmas lie above it."""
        return sum(1 for s in self.sigmas[:-1] if s > sigma)

    def _may_skip(self, x: torch.Tensor, step: int, scale: float | None) -> bool:
        cfg = self.config
        return (self._rate is not None and self._x_prev is not None
                and cfg.start * self.n <= step < cfg.end * self.n and step < self.n - 1
                and scale == self._scale and x.shape == self._x_c.shape
                and (cfg.max_skips == 0 or self._run < cfg.max_skips))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """x [B, ...], sigma [B] -> v shaped like x: computed, or reused from the cache."""
        self.calls += 1
        s = float(sigma.reshape(-1)[0])
        scale_at = getattr(self.model, "scale_at", None)
        scale = float(scale_at(s)) if scale_at is not None else None
        if self._may_skip(x, self.step_of(s), scale):
            change = _mean_abs(x - self._x_prev)                         # [B]
            self._acc = self._acc + self._rate * change / self._v_norm.clamp_min(1e-12)
            if bool((self._acc < self.config.threshold).all()):
                self._x_prev, self._run = x, self._run + 1
                self.skipped += 1
                return self._reuse(x, s)
        v = self.model(x, sigma, **kwargs)
        self.computed += 1
        if scale != self._scale or (self._x_c is not None and self._x_c.shape != x.shape):
            self._x_c = self._s_c = self._older = None  # another w or size: start over
        if self._x_c is not None:
            d_in = _mean_abs(x - self._x_c)                              # [B]
            d_out = _mean_abs(v - self._v_c)
            self._rate = torch.where(d_in > 0, d_out / d_in.clamp_min(1e-12), torch.zeros_like(d_in))
        else:
            self._rate = None
        if self._s_c is not None and self._s_c != s:
            self._older = (self._s_c, self._v_c)
        self._x_prev, self._x_c, self._v_c, self._s_c = x, x, v, s
        self._v_norm = _mean_abs(v)
        self._acc = torch.zeros_like(self._v_norm)
        self._scale, self._run = scale, 0
        return v

    def _reuse(self, x: torch.Tensor, s: float) -> torch.Tensor:
        rule = self.config.reuse
        if rule == "delta":
            return x + (self._v_c - self._x_c)
        if rule == "extrapolate" and self._older is not None:
            s_old, v_old = self._older
            slope = (s - self._s_c) / (self._s_c - s_old)
            return self._v_c + slope * (self._v_c - v_old)
        return self._v_c.clone()
