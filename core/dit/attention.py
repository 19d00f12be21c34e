"""Attention: the kernel backends (PyTorch SDPA by default; flash-attn and SageAttention when
installed and asked for by name) and the DiT's self- and cross-attention layers.

Every backend takes q, k, v as [B, L, Nh, Dh] and returns [B, L, Nh·Dh]; no mask, no dropout,
scale 1/sqrt(Dh) (full, non-causal attention).
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .ops import island_dtype
from .rope import apply_rope

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Backend name -> the module that must be importable for it (None: part of torch).
BACKEND_MODULES: Mapping[str, str | None] = MappingProxyType({
    "sdpa": None,
    "flash_attn": "flash_attn",
    "sageattention": "sageattention",
})
# flash-attn and SageAttention run in half precision only.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = (rearrange(t, "B L Nh Dh -> B Nh L Dh") for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)                       # [B, Nh, L, Dh]
    return rearrange(out, "B Nh L Dh -> B L (Nh Dh)")


def _in_half(fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Run a half-precision-only kernel, casting fp32 inputs to bf16 and the result back."""
    dtype = q.dtype
    if dtype not in HALF_DTYPES:
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    out = fn(q, k, v)                                                   # [B, L, Nh, Dh]
    return rearrange(out.to(dtype), "B L Nh Dh -> B L (Nh Dh)")


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return _in_half(flash_attn_func, q, k, v)


def _sageattention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    return _in_half(lambda a, b, c: sageattn(a, b, c, tensor_layout="NHD", is_causal=False), q, k, v)


_BACKEND_FNS: Mapping[str, AttentionFn] = MappingProxyType({
    "sdpa": _sdpa, "flash_attn": _flash_attn, "sageattention": _sageattention})


def _importable(module: str | None) -> bool:
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except Exception as err:  # a broken CUDA build raises more than ImportError
        log.info("attention backend module %s is not usable: %s", module, err)
        return False
    return True


def available_attention_backends() -> list[str]:
    """Names of the attention backends usable in this environment ('sdpa' always)."""
    return [name for name, module in BACKEND_MODULES.items() if _importable(module)]


def get_attention_backend(name: str) -> AttentionFn:
    """The attention function for a backend name; ValueError when unknown or not installed."""
    if name not in BACKEND_MODULES:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {list(BACKEND_MODULES)}")
    if not _importable(BACKEND_MODULES[name]):
        raise ValueError(
            f"attention backend {name!r} was asked for but the package {BACKEND_MODULES[name]!r} "
            f"is not installed or does not load; install it, or use 'sdpa' (installed here: "
            f"{available_attention_backends()})")
    return _BACKEND_FNS[name]


class SelfAttention(nn.Module):
    """Full spatio-temporal self-attention with RMS q/k norm and 3D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, ops, **factory) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.Linear(dim, dim, **factory)
        self.k = ops.Linear(dim, dim, **factory)
        self.v = ops.Linear(dim, dim, **factory)
        self.o = ops.Linear(dim, dim, **factory)
        # RMSNorm over the whole width D (not per head), as in the checkpoints.
        self.norm_q = ops.RMSNorm(dim, eps=eps, **factory) if qk_norm else nn.Identity()
        self.norm_k = ops.RMSNorm(dim, eps=eps, **factory) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor,
                attn: AttentionFn) -> torch.Tensor:
        wide = island_dtype(x.dtype)

        def split(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t, "B L (Nh Dh) -> B L Nh Dh", Nh=self.num_heads)

        # q and k go to float32 once, for both the norm and the rotation, and back once; q is
        # finished before k starts, so only one of them exists in float32 at a time.
        q = apply_rope(split(self.norm_q(self.q(x).to(wide))), rope).to(x.dtype)  # [B, L, Nh, Dh]
        k = apply_rope(split(self.norm_k(self.k(x).to(wide))), rope).to(x.dtype)  # [B, L, Nh, Dh]
        return self.o(attn(q, k, split(self.v(x))))                     # [B, L, D]


class CrossAttention(nn.Module):
    """Attention from the video tokens to the text context; with an image branch (I2V), also to
    the CLIP image tokens, through separate keys/values, the two results summed before `o`."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, image_branch: bool,
                 ops, **factory) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.Linear(dim, dim, **factory)
        self.k = ops.Linear(dim, dim, **factory)
        self.v = ops.Linear(dim, dim, **factory)
        self.o = ops.Linear(dim, dim, **factory)
        self.norm_q = ops.RMSNorm(dim, eps=eps, **factory) if qk_norm else nn.Identity()
        self.norm_k = ops.RMSNorm(dim, eps=eps, **factory) if qk_norm else nn.Identity()
        if image_branch:
            self.k_img = ops.Linear(dim, dim, **factory)
            self.v_img = ops.Linear(dim, dim, **factory)
            self.norm_k_img = ops.RMSNorm(dim, eps=eps, **factory) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_img: torch.Tensor | None,
                attn: AttentionFn) -> torch.Tensor:
        heads = {"Nh": self.num_heads}
        q = rearrange(self.norm_q(self.q(x)), "B L (Nh Dh) -> B L Nh Dh", **heads)
        k = rearrange(self.norm_k(self.k(context)), "B L (Nh Dh) -> B L Nh Dh", **heads)
        v = rearrange(self.v(context), "B L (Nh Dh) -> B L Nh Dh", **heads)
        out = attn(q, k, v)                                             # [B, L, D]
        if context_img is not None:
            k_img = rearrange(self.norm_k_img(self.k_img(context_img)), "B L (Nh Dh) -> B L Nh Dh",
                              **heads)
            v_img = rearrange(self.v_img(context_img), "B L (Nh Dh) -> B L Nh Dh", **heads)
            out = out + attn(q, k_img, v_img)                           # [B, L, D]
        return self.o(out)
