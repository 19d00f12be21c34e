"""One call from a DiT, noise and a schedule to a latent: what the nodes and the CLI use.

    x = sample(dit, noise, sigmas, positive=ctx, negative=neg, cfg=5.0, solver="unipc")

Composition (each piece is usable alone): GuidedVelocity (CFG around the DiT) -> optional
FirstFrameInjection.wrap (TI2V) -> a solver from SOLVERS with the injection as its `project` hook.
`sample_stages` runs several models over one schedule (Wan2.2 A14B experts): one GuidedVelocity
per stage behind a `stages.StagedVelocity` router, still one solver run.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .conditioning import FirstFrameInjection
from .guidance import GuidedVelocity, Schedule
from .noise import noise_latent
from .solvers import SamplingCancelled, get_solver
from .stages import Stage, StagedVelocity, check_stages
from .step_cache import StepCache, StepCacheConfig

DEFAULT_PATCH = (1, 2, 2)  # Wan's patch, used only when the DiT exposes no config.patch_size


def _patch_size_of(dit: Any) -> tuple[int, int, int]:
    patch = getattr(getattr(dit, "config", None), "patch_size", None)
    return tuple(patch) if patch is not None else DEFAULT_PATCH  # type: ignore[return-value]


def sample(dit: Callable[..., torch.Tensor], noise: torch.Tensor, sigmas: torch.Tensor, *,
           positive: torch.Tensor, negative: torch.Tensor | None = None, cfg: Schedule = 1.0,
           solver: str = "euler", latent: torch.Tensor | None = None,
           first_frame: torch.Tensor | None = None, i2v_concat: torch.Tensor | None = None,
           clip_fea: torch.Tensor | None = None, batched_cfg: bool = True, pad_context: bool = False,
           callback: Callable[[dict[str, Any]], None] | None = None,
           should_cancel: Callable[[], bool] | None = None,
           step_cache: StepCacheConfig | None = None) -> torch.Tensor:
    """Sample a latent [B, C, F, H, W] with the velocity DiT `dit(x, t, context, clip_fea=None)`.

    noise [B, C, F, H, W] (see `noise.initial_noise`); sigmas [N + 1] (see `schedules`).
    latent: the clean input for video-to-video; it is noised to sigmas[0] first (denoise < 1).
    first_frame: TI2V first-frame latent z [B or 1, C, 1, H, W]; frame 0 of the result is z, bit
    for bit. i2v_concat: Wan2.1 I2V extra channels [B, 20, F, H, W] (`conditioning.i2v_concat`).
    positive/negative [B or 1, L, D] text contexts; cfg a float, per-step list or sigma -> w.
    callback(info) each step (see `solvers`); should_cancel() is polled before each callback and
    raises SamplingCancelled when true. Raises NonFiniteModelOutput on NaN/inf. The inputs are
    never modified. step_cache: skip DiT calls adaptively (`step_cache.StepCache`, per call).
    The one-stage case of `sample_stages`.
    """
    return sample_stages([Stage(dit, 0.0, cfg)], noise, sigmas, positive=positive, negative=negative,
                         solver=solver, latent=latent, first_frame=first_frame, i2v_concat=i2v_concat,
                         clip_fea=clip_fea, batched_cfg=batched_cfg, pad_context=pad_context,
                         callback=callback, should_cancel=should_cancel, step_cache=step_cache)


def sample_stages(stages: Sequence[Stage], noise: torch.Tensor, sigmas: torch.Tensor, *,
                  positive: torch.Tensor, negative: torch.Tensor | None = None, solver: str = "euler",
                  latent: torch.Tensor | None = None, first_frame: torch.Tensor | None = None,
                  i2v_concat: torch.Tensor | None = None, clip_fea: torch.Tensor | None = None,
                  batched_cfg: bool = True, pad_context: bool = False,
                  callback: Callable[[dict[str, Any]], None] | None = None,
                  should_cancel: Callable[[], bool] | None = None,
                  step_cache: StepCacheConfig | None = None) -> torch.Tensor:
    """Sample with several models over one schedule (Wan2.2 A14B: high- then low-noise expert).

    `stages` (see `stages.Stage`): each a DiT, the lower end of its sigma range and its cfg, from
    high noise to low. ONE solver run covers the whole schedule and each model call goes to its
    stage, so multistep solvers keep their history across the switch. A stage's `activate()` is
    called when sampling enters it (the nodes load that expert there and offload the other).
    Every other argument as in `sample`, shared by all stages.
    """
    check_stages(stages)
    run_solver = get_solver(solver)
    sigmas = torch.as_tensor(sigmas)
    x = noise if latent is None else noise_latent(latent, noise, float(sigmas.reshape(-1)[0]))
    # The step cache wraps each stage's guided velocity (around CFG, inside the TI2V wrapper); a
    # stage of its own per expert, so the switch of expert starts a fresh cache.
    guided = [StepCache.wrap(GuidedVelocity(s.dit, positive, negative, s.cfg, sigmas=sigmas,
                                            batched=batched_cfg, pad_context=pad_context,
                                            clip_fea=clip_fea, concat=i2v_concat), step_cache, sigmas)
              for s in stages]
    model = guided[0] if len(stages) == 1 and stages[0].activate is None else \
        StagedVelocity(stages, guided, sigmas)
    project = None
    if first_frame is not None:
        injection = FirstFrameInjection(first_frame, _patch_size_of(stages[0].dit))
        model, project = injection.wrap(model), injection.inject

    def on_step(info: dict[str, Any]) -> None:
        if should_cancel is not None and should_cancel():
            raise SamplingCancelled(f"sampling cancelled at step {info['i'] + 1}/{info['total']}")
        if callback is not None:
            callback(info)

    return run_solver(model, x, sigmas, callback=on_step, project=project)
