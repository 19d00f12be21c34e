"""One Wan transformer block: AdaLN-modulated self-attention, cross-attention, AdaLN-modulated FFN.

    x = x + gate_sa · SelfAttn(LN(x) · (1 + scale_sa) + shift_sa)
    x = x + CrossAttn(norm3(x), text [, image])
    x = x + gate_ff · FFN(LN(x) · (1 + scale_ff) + shift_ff)

The six vectors (shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff), in that order, are the
block's learned `modulation` [1, 6, D] plus the projected timestep embedding. The residual stream,
the norms and the modulation stay in float32 (the reference's fp32 islands); the linear layers and
attention run in the compute dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionFn, CrossAttention, SelfAttention
from .config import DiTConfig
from .ops import island_dtype
from .timestep import TokenTimes

# Hidden FFN activations computed at once, at most (tokens x ffn_dim, 64 MiB in bf16): 3744 tokens
# of Wan2.1-1.3B, large enough for full matmul efficiency, small next to a 30k-token video's 1.2 GB.
FFN_SLICE_ELEMENTS = 1 << 25


class WanBlock(nn.Module):
    def __init__(self, config: DiTConfig, ops, **factory) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = ops.LayerNorm(dim, eps=eps, elementwise_affine=False, **factory)
        self.self_attn = SelfAttention(dim, config.num_heads, config.qk_norm, eps, ops, **factory)
        self.norm3 = (ops.LayerNorm(dim, eps=eps, elementwise_affine=True, **factory)
                      if config.cross_attn_norm else nn.Identity())
        self.cross_attn = CrossAttention(dim, config.num_heads, config.qk_norm, eps,
                                         config.has_image_branch, ops, **factory)
        self.norm2 = ops.LayerNorm(dim, eps=eps, elementwise_affine=False, **factory)
        self.ffn = nn.Sequential(ops.Linear(dim, config.ffn_dim, **factory),
                                 nn.GELU(approximate="tanh"),
                                 ops.Linear(config.ffn_dim, dim, **factory))
        self.modulation = nn.Parameter(torch.empty(1, 6, dim, **factory))

    def forward(self, x: torch.Tensor, times: TokenTimes, context: torch.Tensor,
                context_img: torch.Tensor | None, rope: torch.Tensor,
                attn: AttentionFn, compute_dtype: torch.dtype,
                self_attn: AttentionFn | None = None) -> torch.Tensor:
        """x: [B, L, D] residual stream (float32); times.table: [U, 6, D] projected timestep
        embeddings; context: [B, Lc, D] and context_img: [B, Li, D] in the compute dtype.
        self_attn: the kernel for self-attention when it differs from `attn` (sequence-parallel
        all-to-all around it); cross-attention always uses `attn`."""
        island = x.dtype
        assert island == island_dtype(compute_dtype), (island, compute_dtype)
        mods = self.modulation.to(island) + times.table                 # [U, 6, D]

        def mod(i: int) -> torch.Tensor:                                # each token's vector i
            return times.pick(mods[:, i])                               # [B, Lt, D]

        # Modulated inputs are cast in the same expression, so their float32 copy is freed at once.
        h = torch.addcmul(mod(0), self.norm1(x), 1 + mod(1)).to(compute_dtype)  # [B, L, D]
        h = self.self_attn(h, rope, self_attn or attn)                  # [B, L, D]
        # Residual updates mix a compute-dtype branch into the float32 stream; type promotion
        # upcasts inside the kernel, with no separate cast pass.
        x = torch.addcmul(x, h, mod(2))                                 # [B, L, D]
        h = self.cross_attn(self.norm3(x).to(compute_dtype), context, context_img, attn)
        x = x + h                                                       # [B, L, D]
        h = torch.addcmul(mod(3), self.norm2(x), 1 + mod(4)).to(compute_dtype)  # [B, L, D]
        # The FFN's hidden activations are the largest tensors of the block (2 x L x ffn_dim);
        # running it over slices of tokens bounds them at no cost in speed (tokens are independent).
        step = max(1, FFN_SLICE_ELEMENTS // (h.shape[0] * self.ffn[0].out_features))
        if h.shape[1] <= step:
            h = self.ffn(h)                                             # [B, L, D]
        else:
            h = torch.cat([self.ffn(part) for part in h.split(step, dim=1)], dim=1)  # [B, L, D]
        return torch.addcmul(x, h, mod(5))                              # [B, L, D]
