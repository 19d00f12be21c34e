"""The flow-matching training loss (DESIGN.md, seeds 001 and 002) and text dropout for CFG.

    sigma ~ table (uniform index into the shifted 1000-entry table) or sigmoid(N(m, s))  [B]
    eps ~ N(0, I);  x_sigma = (1 - sigma) x0 + sigma eps;  target v = eps - x0
    loss = mean_b( w(sigma_b) · mean_{elements of b}( (v_pred - target)^2 ) )

w is seed 001's bell weight for table sampling (DiffSynth's `training_weight`), 1 for
logit-normal sampling unless `weighted=True`. TI2V (Wan2.2): with probability `first_frame_prob`
a sample keeps latent frame 0 clean, its tokens get t = 0, and frame 0 is left out of that
sample's mean. Every random number comes from the `generator` passed in, never the global RNG.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..flow.schedules import NUM_TRAIN_TIMESTEPS, TrainingTable, training_table

SAMPLINGS = ("table", "logit_normal")


def sample_sigmas(batch: int, generator: torch.Generator, *, sampling: str = "table",
                  table: TrainingTable | None = None, logit_mean: float = 0.0,
                  logit_std: float = 1.0) -> torch.Tensor:
    """[B] float64 training sigmas in (0, 1), drawn on the generator's device, returned on CPU.

    table: a uniform index into `table.sigmas` (default `training_table()`: 1000 entries, shift 5).
    logit_normal: sigmoid(N(logit_mean, logit_std²)) (SD3 / minRF).
    """
    if sampling == "table":
        table = table if table is not None else training_table()
        idx = torch.randint(0, table.sigmas.numel(), (batch,), generator=generator,
                            device=generator.device).cpu()
        return table.sigmas[idx]
    if sampling == "logit_normal":
        if not logit_std > 0 or not math.isfinite(logit_std) or not math.isfinite(logit_mean):
            raise ValueError(f"logit-normal sampling needs a finite mean and a std > 0, got "
                             f"mean {logit_mean}, std {logit_std}")
        z = torch.randn(batch, generator=generator, device=generator.device, dtype=torch.float64)
        return torch.sigmoid(z.cpu() * logit_std + logit_mean)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def drop_condition(context: torch.Tensor, null_context: torch.Tensor, p: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Text dropout for classifier-free guidance: each sample's context [B, Lc, D] is replaced by
    `null_context` ([Lc, D], [1, Lc, D] or [B, Lc, D]: the embedding of the empty prompt) with
    probability p. Returns a new tensor; p = 0 returns `context` itself.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if context.ndim != 3:
        raise ValueError(f"context must be [B, L_text, D], got shape {list(context.shape)}")
    null = null_context if null_context.ndim == 3 else null_context[None]
    if null.ndim != 3 or null.shape[1:] != context.shape[1:] or null.shape[0] not in (1, context.shape[0]):
        raise ValueError(f"null context {list(null_context.shape)} must match the context "
                         f"{list(context.shape)} in length and width (pad both prompts' "
                         f"embeddings to the same number of tokens)")
    keep = torch.rand(context.shape[0], generator=generator, device=generator.device).cpu() >= p
    if p == 0.0:
        return context
    mask = keep.to(context.device)[:, None, None]                       # [B, 1, 1]
    return torch.where(mask, context, null.to(device=context.device, dtype=context.dtype))


def _patch_size(dit: nn.Module) -> tuple[int, int, int]:
    config = getattr(dit, "config", None)
    patch = getattr(config, "patch_size", None)
    if patch is None or len(patch) != 3:
        raise TypeError(f"TI2V training needs the model's patch size (model.config.patch_size) to "
                        f"give the first frame's tokens t = 0; {type(dit).__name__} has none")
    return tuple(int(p) for p in patch)


def flow_matching_loss(dit: nn.Module, x0: torch.Tensor, context: torch.Tensor, *,
                       generator: torch.Generator, sampling: str = "table",
                       table: TrainingTable | None = None, logit_mean: float = 0.0,
                       logit_std: float = 1.0, weighted: bool | None = None,
                       first_frame_prob: float = 0.0, clip_fea: torch.Tensor | None = None,
                       concat: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The SFT loss of one batch: (scalar loss, info).

    dit: called as dit(x, t, context, clip_fea=...) -> v [B, C, F, H, W] (a WanDiT or any module
        with that signature; TI2V needs `dit.config.patch_size`).
    x0: clean latents [B, C, F, H, W]; context: text embeddings [B, Lc, D].
    generator: source of sigma, noise and the first-frame coin (in that order); its device is
        where they are drawn (a CPU generator makes runs identical across devices).
    sampling: 'table' (uniform over `table`, default `training_table()`, shift 5) or
        'logit_normal' (sigma = sigmoid(N(logit_mean, logit_std²))).
    weighted: apply the bell weight w(sigma) (default: True for 'table', False for
        'logit_normal'); for 'logit_normal' it is the bell formula evaluated at t = 1000 sigma,
        normalised over `table`'s timesteps.
    first_frame_prob: TI2V: per-sample probability that latent frame 0 stays clean (needs F >= 2
        and a patch size of 1 in time).
    clip_fea: [B, 257, 1280] for I2V models; concat: [B, C', F, H, W] channels appended to x_sigma
        before the model (I2V mask + image latent).

    info (all detached, CPU): 'sigma' [B] float64, 'weight' [B] float64, 'first_frame' [B] bool,
    'loss_per_sample' [B] float32 (weighted).
    """
    if not isinstance(x0, torch.Tensor) or x0.ndim != 5:
        raise ValueError(f"x0 must be a latent video [B, C, F, H, W], got "
                         f"{list(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
    if not 0.0 <= first_frame_prob <= 1.0:
        raise ValueError(f"first_frame_prob must be in [0, 1], got {first_frame_prob}")
    b, _, f, h, w = x0.shape
    table = table if table is not None else training_table()
    weighted = (sampling == "table") if weighted is None else bool(weighted)

    sigma = sample_sigmas(b, generator, sampling=sampling, table=table, logit_mean=logit_mean,
                          logit_std=logit_std)                          # [B] float64
    eps = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=torch.float32)
    eps = eps.to(device=x0.device, dtype=x0.dtype)                     # [B, C, F, H, W]
    first = torch.rand(b, generator=generator, device=generator.device).cpu() < first_frame_prob
    if first_frame_prob == 0.0:
        first = torch.zeros(b, dtype=torch.bool)

    s = sigma.to(device=x0.device, dtype=x0.dtype).view(b, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps                                        # [B, C, F, H, W]
    target = eps - x0                                                   # [B, C, F, H, W]
    t = (sigma * NUM_TRAIN_TIMESTEPS).to(torch.float32)                 # [B]
    keep = torch.ones(b, 1, f, 1, 1, device=x0.device, dtype=x0.dtype)  # loss mask
    if first_frame_prob > 0.0:
        pf, ph, pw = _patch_size(dit)
        if pf != 1 or f < 2:
            raise ValueError(f"TI2V training keeps latent frame 0 clean: it needs at least 2 latent "
                             f"frames (got {f}) and a temporal patch size of 1 (got {pf})")
        clean = first.to(x0.device).view(b, 1, 1, 1, 1)
        x_t[:, :, :1] = torch.where(clean, x0[:, :, :1], x_t[:, :, :1])
        per_frame = t[:, None].repeat(1, f)                             # [B, F]
        per_frame[first, 0] = 0.0
        t = per_frame.repeat_interleave((h // ph) * (w // pw), dim=1)   # [B, L], tokens f-major
        keep[:, :, :1] = (~first).to(x0.dtype).to(x0.device).view(b, 1, 1, 1, 1)

    model_in = x_t if concat is None else torch.cat([x_t, concat.to(x_t.dtype)], dim=1)
    kwargs = {} if clip_fea is None else {"clip_fea": clip_fea}
    v = dit(model_in, t.to(x0.device), context, **kwargs)              # [B, C, F, H, W]
    if v.shape != x0.shape:
        raise ValueError(f"the model returned shape {list(v.shape)} for latents {list(x0.shape)}; "
                         f"its output channels must equal the latent channels")

    sq = (v.float() - target.float()) ** 2                              # [B, C, F, H, W]
    keep = keep.float().expand(b, 1, f, 1, 1)
    count = keep.sum(dim=(1, 2, 3, 4)) * (sq.shape[1] * h * w)          # [B] elements kept
    mse = (sq * keep).sum(dim=(1, 2, 3, 4)) / count                    # [B]
    if weighted:
        weight = _bell_weight(sigma * NUM_TRAIN_TIMESTEPS, table)       # [B] float64
    else:
        weight = torch.ones(b, dtype=torch.float64)
    per_sample = mse * weight.to(device=mse.device, dtype=mse.dtype)   # [B]
    info = {"sigma": sigma, "weight": weight, "first_frame": first,
            "loss_per_sample": per_sample.detach().float().cpu()}
    return per_sample.mean(), info


def _bell_weight(timesteps: torch.Tensor, table: TrainingTable) -> torch.Tensor:
    """w(t) of seed 001 normalised over `table` ([B] float64): for t in the table exactly the
    table's own weight; for other t (logit-normal sampling) the same bell, shift and scale."""
    def bell(t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-2.0 * ((t - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)

    yt = bell(table.timesteps)                                           # [N]
    scale = table.timesteps.numel() / (yt - yt.min()).sum()
    return ((bell(timesteps.to(torch.float64)) - yt.min()) * scale).clamp_min(0.0)
