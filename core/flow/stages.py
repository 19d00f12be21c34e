"""Sampling with several models over one schedule: Wan2.2 A14B's high-noise and low-noise experts.

A `Stage` is one model over a range of noise levels, with its own guidance scale. Stages are given
from high noise to low; stage j takes the model calls at sigma >= its `sigma_min` that no earlier
stage takes, so the ranges tile [0, 1] when the last stage has sigma_min = 0:

    stages = [Stage(high_dit, sigma_min=0.9, cfg=3.5), Stage(low_dit, sigma_min=0.0, cfg=3.5)]

`StagedVelocity` routes each model call to its stage inside ONE solver run over the whole
schedule, so a multistep solver (dpmpp_2m, unipc) keeps its history of x0 estimates across the
switch; euler and heun carry no history and simply switch. (Two chained samplers, as two
KSamplerAdvanced in ComfyUI, restart the solver at the switch: its first step after the switch is
first order again.)

The switch rules
----------------
- Boundary sigma (official Wan2.2, `text2video.py` / `image2video.py`): with t = 1000 sigma after
  the shift, sigma >= boundary -> high-noise expert, else low-noise. `WAN22_BOUNDARY` holds the
  official values (0.875 T2V, 0.900 I2V).
- Step index (ComfyUI's templates, two KSamplerAdvanced): steps [0, k) on the high-noise expert,
  [k, N) on the low-noise one. `step_boundary(sigmas, k)` turns k into the equivalent sigma_min.

Routing is decided once, in float64, on the schedule: a stage boundary b covers the steps i with
sigmas[i] >= b. Each model call is then routed by the schedule point nearest to its sigma (solvers
hand the model float32 sigmas, whose rounding must not move a call across the boundary). Every
call of our solvers is at a schedule point; heun's second call of a step is at the next point, so
at the switch step it already runs on the next stage (per call, as the official rule is stated).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .guidance import Schedule

# Official Wan2.2 A14B switch points (sigma >= boundary -> high-noise expert) and defaults.
WAN22_BOUNDARY = {"t2v": 0.875, "i2v": 0.900}
# Official sampling defaults (Wan2.2 configs): steps, shift, cfg on the high / low expert.
WAN22_DEFAULTS = {"t2v": {"steps": 40, "shift": 12.0, "cfg": (4.0, 3.0)},
                  "i2v": {"steps": 40, "shift": 5.0, "cfg": (3.5, 3.5)}}


@dataclass(frozen=True)
class Stage:
    """One model over a range of noise levels (see the module docstring)."""
    dit: Callable[..., torch.Tensor]      # the velocity DiT dit(x, t, context, clip_fea=None) of this stage
    sigma_min: float = 0.0                # lower end of its range: calls at sigma >= sigma_min not taken before
    cfg: Schedule = 1.0                   # guidance scale on this stage (a float, per-step list or sigma -> w)
    activate: Callable[[], Any] | None = None  # called when sampling enters the stage (load it, offload the other)
    name: str = ""                        # for messages, e.g. "high-noise expert"

    def __post_init__(self) -> None:
        if not callable(self.dit):
            raise TypeError(f"stage {self.name or '?'}: dit must be callable, got {type(self.dit).__name__}")
        s = float(self.sigma_min)
        if math.isnan(s) or s < 0.0:
            raise ValueError(f"stage {self.name or '?'}: sigma_min must be in [0, 1] (above 1, or "
                             f"inf, for a stage that takes no step), got {self.sigma_min}")


def check_stages(stages: Sequence[Stage]) -> None:
    """Stages must be non-empty, ordered from high noise to low (sigma_min non-increasing), and the
    last one must reach sigma = 0, so every model call has a stage."""
    if not stages:
        raise ValueError("give at least one stage (one model)")
    if any(not isinstance(s, Stage) for s in stages):
        raise TypeError("stages must be core.flow.stages.Stage objects")
    mins = [float(s.sigma_min) for s in stages]
    if any(b > a for a, b in zip(mins, mins[1:])):
        raise ValueError(f"stages must go from high noise to low (sigma_min non-increasing), got {mins}")
    if mins[-1] != 0.0:
        raise ValueError(f"the last stage must reach sigma = 0 (sigma_min = 0), got {mins[-1]}")


def _schedule(sigmas: torch.Tensor) -> list[float]:
    return torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1).tolist()


def switch_step(sigmas: torch.Tensor, boundary: float) -> int:
    """How many steps of the schedule (sigmas [N + 1]) run at sigma >= boundary: the high-noise
    expert's steps under the official rule. Steps are counted by their starting sigma."""
    s = _schedule(sigmas)
    return sum(1 for v in s[:-1] if v >= float(boundary))


def step_boundary(sigmas: torch.Tensor, step: int) -> float:
    """The sigma_min that gives the first stage exactly the steps [0, step) of `sigmas` [N + 1]
    (ComfyUI's split of two KSamplerAdvanced at `step`): sigmas[step - 1]; inf for step 0 (an empty
    first stage), sigmas[N - 1] for step >= N (the first stage takes every step)."""
    s = _schedule(sigmas)
    n = len(s) - 1
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"the switch step must be a non-negative integer, got {step!r}")
    if step == 0:
        return math.inf
    return s[min(step, n) - 1]


def stage_steps(stages: Sequence[Stage], sigmas: torch.Tensor) -> list[range]:
    """The steps of `sigmas` [N + 1] each stage runs (ranges, in stage order)."""
    check_stages(stages)
    n = len(_schedule(sigmas)) - 1
    ends = [min(switch_step(sigmas, s.sigma_min), n) for s in stages[:-1]] + [n]
    starts = [0] + ends[:-1]
    return [range(a, max(a, b)) for a, b in zip(starts, ends)]


class StagedVelocity:
    """The velocity model a solver sees when several models share one schedule: each call goes to
    the stage of the schedule point nearest to its sigma; `activate` runs once per stage entry.

    models[j] is stage j's velocity model `model(x, sigma, timestep=None) -> v` (e.g. a
    `guidance.GuidedVelocity` around stage j's DiT). Create one per sampling run: it remembers which
    stage is active for that run only.
    """

    def __init__(self, stages: Sequence[Stage], models: Sequence[Callable[..., torch.Tensor]],
                 sigmas: torch.Tensor):
        check_stages(stages)
        if len(models) != len(stages):
            raise ValueError(f"{len(models)} velocity models for {len(stages)} stages")
        self.stages, self.models = list(stages), list(models)
        self.points = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
        self.stage_of_step: list[int] = []
        for j, steps in enumerate(stage_steps(stages, sigmas)):
            self.stage_of_step += [j] * len(steps)
        self.active: int | None = None
        self.switches: list[tuple[int, int]] = []  # (step, stage) each time a stage was entered

    def stage_at(self, sigma: float) -> int:
        """The stage index for a model call at `sigma`."""
        step = int(torch.argmin((self.points - float(sigma)).abs()))
        # A call at the final point (sigma = 0 for a full schedule) belongs to the last step.
        return self.stage_of_step[min(step, len(self.stage_of_step) - 1)]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        j = self.stage_at(float(sigma.reshape(-1)[0]))
        if j != self.active:
            step = int(torch.argmin((self.points - float(sigma.reshape(-1)[0])).abs()))
            if self.stages[j].activate is not None:
                self.stages[j].activate()
            self.active = j
            self.switches.append((step, j))
        return self.models[j](x, sigma, **kwargs)
