"""Classifier-free guidance, outside both the DiT and the solver.

`GuidedVelocity` turns a DiT `dit(x, t, context, clip_fea=None) -> v` (x [B, C_in, F, H, W], t [B]
or [B, L] on the 0..1000 scale) into the velocity model the solvers call,
`model(x, sigma, timestep=None) -> v` with sigma [B] in [0, 1]:

    v = v_u + w (v_c - v_u)

- w == 1 (at that step) calls the DiT once, on the positive context only: no negative pass.
  Any other w needs a negative context (ValueError otherwise).
- Otherwise, with `batched=True`, cond and uncond run as ONE forward on a doubled batch
  [x; x] with contexts [positive; negative]. Contexts of different token lengths cannot share a
  batch: they are zero-padded to the longer one when `pad_context=True` (exact for DiTs that pad
  text to a fixed length with zeros themselves, as Wan's reference does to 512), otherwise the
  two passes run as two calls. `batched=False` always makes two calls (half the peak memory).
- `cfg` is a float, a per-step sequence (w[i] applies to model calls at sigma in
  (sigmas[i+1], sigmas[i]], so `sigmas` is needed), or a callable sigma -> w.
- `concat` ([B, C_extra, F, H, W], e.g. the Wan2.1 I2V mask + image latent) is appended to x
  along channels before every call, identically for cond and uncond; `clip_fea` too.
- `timestep=` ([B] or [B, L], 0..1000) overrides t = 1000 sigma: TI2V passes per-token t here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Schedule = float | Sequence[float] | Callable[[float], float]


def _match_batch(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(f"{name} has batch {t.shape[0]} but the latent has batch {batch}; "
                     f"give one {name} per latent or a single one for all")


def _pad_tokens(ctx: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad a context [B, L, D] to [B, length, D]."""
    if ctx.shape[1] == length:
        return ctx
    return torch.cat([ctx, ctx.new_zeros(ctx.shape[0], length - ctx.shape[1], *ctx.shape[2:])], dim=1)


def guidance_interval(w: float, sigma_min: float) -> Schedule:
    """The schedule "w at model calls with sigma > sigma_min, 1 at or below": guidance only while
    the noise is high (a guidance interval; sigma_min 0: w everywhere). At low noise the model
    only sharpens what is already decided, and the extrapolation of guidance there overshoots
    (the default model's objects then change size from frame to frame); w = 1 also skips the
    negative pass on those steps."""
    w, sigma_min = float(w), float(sigma_min)
    if not 0.0 <= sigma_min < 1.0:
        raise ValueError(f"cfg_until must be in [0, 1) (the sigma below which guidance stops; "
                         f"0 = guidance on every step), got {sigma_min}")
    if sigma_min == 0.0:
        return w
    return lambda sigma: w if sigma > sigma_min else 1.0


def combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, w: float) -> torch.Tensor:
    """v = v_u + w (v_c - v_u); all tensors share one shape."""
    return v_uncond + w * (v_cond - v_uncond)


class GuidedVelocity:
    """A velocity model with classifier-free guidance around a DiT (see the module docstring).

    Holds references only; calling it changes nothing on the object, so one instance can serve
    any number of sampling runs.
    """

    def __init__(self, dit: Callable[..., torch.Tensor], positive: torch.Tensor,
                 negative: torch.Tensor | None = None, cfg: Schedule = 1.0, *,
                 sigmas: torch.Tensor | None = None, batched: bool = True, pad_context: bool = False,
                 clip_fea: torch.Tensor | None = None, concat: torch.Tensor | None = None):
        if not torch.is_tensor(positive) or positive.ndim != 3:
            raise ValueError(f"positive must be a text context [B, L, D], got "
                             f"{tuple(positive.shape) if torch.is_tensor(positive) else type(positive).__name__}")
        if negative is not None and (not torch.is_tensor(negative) or negative.ndim != 3
                                     or negative.shape[-1] != positive.shape[-1]):
            raise ValueError(f"negative must be a text context [B, L, {positive.shape[-1]}] like positive, "
                             f"got {tuple(negative.shape) if torch.is_tensor(negative) else type(negative).__name__}")
        self.dit, self.positive, self.negative = dit, positive, negative
        self.batched, self.pad_context = bool(batched), bool(pad_context)
        self.clip_fea, self.concat = clip_fea, concat
        self._cfg_at = self._resolve_schedule(cfg, sigmas)
        if negative is None and isinstance(cfg, (int, float)) and float(cfg) != 1.0:
            raise ValueError(f"cfg={cfg} needs a negative context (e.g. the empty prompt's "
                             f"encoding); pass negative= or set cfg=1")

    @staticmethod
    def _resolve_schedule(cfg: Schedule, sigmas: torch.Tensor | None) -> Callable[[float], float]:
        if callable(cfg):
            return lambda s: float(cfg(s))
        if isinstance(cfg, (int, float)) and not isinstance(cfg, bool):
            w = float(cfg)
            return lambda s: w
        if isinstance(cfg, Sequence) or torch.is_tensor(cfg):
            ws = [float(w) for w in cfg]
            if sigmas is None:
                raise ValueError("a per-step cfg list needs the sigmas it is keyed to: pass sigmas=")
            sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).tolist()
            if len(ws) != len(sig) - 1:
                raise ValueError(f"cfg list has {len(ws)} values but the schedule has {len(sig) - 1} "
                                 f"steps; give one guidance scale per step")

            def at(s: float) -> float:
                # the step i with sigmas[i+1] < s <= sigmas[i]; calls above sigmas[0] use step 0
                i = sum(1 for sv in sig[1:-1] if sv >= s)
                return ws[i]
            return at
        raise TypeError(f"cfg must be a number, a list of numbers per step or a callable sigma -> w, "
                        f"got {type(cfg).__name__}")

    def scale_at(self, sigma: float) -> float:
        """The guidance scale w used for a model call at `sigma`."""
        return self._cfg_at(float(sigma))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, timestep: torch.Tensor | None = None,
                 **_: Any) -> torch.Tensor:
        """x [B, C, F, H, W], sigma [B] in [0, 1] -> guided velocity [B, C, F, H, W]."""
        batch = x.shape[0]
        t = timestep if timestep is not None else sigma * 1000.0  # [B] or [B, L]
        pos = _match_batch(self.positive, batch, "positive")
        clip = None if self.clip_fea is None else _match_batch(self.clip_fea, batch, "clip_fea")
        concat = None if self.concat is None else _match_batch(self.concat, batch, "concat")
        w = self.scale_at(float(sigma.reshape(-1)[0]))
        if w == 1.0:
            return self._call(x, t, pos, clip, concat)
        if self.negative is None:
            raise ValueError(f"guidance scale {w} at sigma={float(sigma.reshape(-1)[0]):.4g} needs a "
                             f"negative context; pass negative= or use cfg=1 at that step")
        neg = _match_batch(self.negative, batch, "negative")
        if self.batched and (pos.shape[1] == neg.shape[1] or self.pad_context):
            length = max(pos.shape[1], neg.shape[1])
            ctx = torch.cat([_pad_tokens(pos, length), _pad_tokens(neg, length)])  # [2B, L, D]
            v = self._call(torch.cat([x, x]), torch.cat([t, t]), ctx,
                           None if clip is None else torch.cat([clip, clip]),
                           None if concat is None else torch.cat([concat, concat]))
            v_cond, v_uncond = v[:batch], v[batch:]
        else:
            v_cond = self._call(x, t, pos, clip, concat)
            v_uncond = self._call(x, t, neg, clip, concat)
        return combine(v_uncond, v_cond, w)

    def _call(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, clip: torch.Tensor | None,
              concat: torch.Tensor | None) -> torch.Tensor:
        if concat is not None:
            x_in = torch.cat([x, concat.to(x.dtype)], dim=1)  # [B, C + C_extra, F, H, W]
        else:
            x_in = x
        v = self.dit(x_in, t, ctx) if clip is None else self.dit(x_in, t, ctx, clip_fea=clip)
        if v.shape != x.shape:
            raise ValueError(f"the DiT returned {tuple(v.shape)} for a latent {tuple(x.shape)} "
                             f"(input {tuple(x_in.shape)}): its output channels must match the latent")
        return v
