"""Ulysses sequence parallelism (Jacobs et al. 2023, "DeepSpeed Ulysses").

Each of N ranks holds L/N tokens. Everything that acts on tokens one at a time (patch embedding,
modulation, cross-attention to the text, FFN, norms, the head) runs on the local slice. Only
self-attention needs every token: before it, one all-to-all per q, k, v turns "my tokens, all
heads" into "all tokens, my Nh/N heads"; attention runs on whole sequences; a second all-to-all
turns the result back. Per rank and block that moves 4 · B·L·D/N values (q, k, v, out), against
the block's ~24·B·L·D² + 4·B·L²·D FLOPs.

The token count is padded at the end to a multiple of N. The padding never enters attention: after
the all-to-all the full sequence is cut back to the L real tokens (exactly what masking them out
would do, without a mask), and the head's output is cut back to L after the final gather.

    layout through one self-attention, B batch, Ls = L_pad / N, h = Nh / N:
      q, k, v  [B, Ls, Nh, Dh] --all-to-all--> [B, L_pad, h, Dh] --cut--> [B, L, h, Dh]
      attn     [B, L, h·Dh]    --pad---------> [B, L_pad, h·Dh]  --all-to-all--> [B, Ls, Nh·Dh]
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from einops import rearrange

from .mesh import collective

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SequenceParallel:
    """The Ulysses layout of a process group; `for_length(L)` gives the plan of one forward."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def for_length(self, length: int) -> "SequenceShard":
        return SequenceShard(self, length)


class SequenceShard:
    """One forward's split of L tokens over the ranks (a local object: nothing kept between calls)."""

    def __init__(self, layout: SequenceParallel, length: int) -> None:
        self.layout, self.length = layout, int(length)
        self.local = -(-self.length // layout.size)                     # Ls = ceil(L / N)
        self.padded = self.local * layout.size                          # L_pad

    def shard(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's slice (of Ls positions) of a tensor with L positions along `dim`."""
        if t.shape[dim] != self.length:
            raise AssertionError(f"expected {self.length} tokens along dim {dim}, got {t.shape}")
        start = self.layout.rank * self.local
        part = t.narrow(dim, min(start, self.length), max(0, min(self.local, self.length - start)))
        missing = self.local - part.shape[dim]
        if missing:                                                     # the last ranks' padding
            pad_shape = list(part.shape)
            pad_shape[dim] = missing
            part = torch.cat([part, part.new_zeros(pad_shape)], dim=dim)
        return part.contiguous()

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """All ranks' slices put back together along `dim`, cut to the L real positions."""
        parts = [torch.empty_like(t) for _ in range(self.layout.size)]
        collective("all-gather of the token slices",
                   lambda: dist.all_gather(parts, t.contiguous(), group=self.layout.group))
        return torch.cat(parts, dim=dim).narrow(dim, 0, self.length)

    def _all_to_all(self, send: torch.Tensor) -> torch.Tensor:
        """send [N, ...]: slice j goes to rank j; returns [N, ...] with slice j from rank j."""
        send = send.contiguous()
        received = torch.empty_like(send)
        collective("all-to-all of the attention inputs",
                   lambda: dist.all_to_all_single(received, send, group=self.layout.group))
        return received

    def to_full_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[B, Ls, Nh, Dh] (my tokens, all heads) -> [B, L, Nh/N, Dh] (all real tokens, my heads)."""
        n = self.layout.size
        send = rearrange(x, "B Ls (N h) Dh -> N B Ls h Dh", N=n)
        full = rearrange(self._all_to_all(send), "N B Ls h Dh -> B (N Ls) h Dh")  # [B, L_pad, h, Dh]
        return full[:, :self.length]

    def to_local_tokens(self, out: torch.Tensor, head_dim: int) -> torch.Tensor:
        """[B, L, (Nh/N)·Dh] (all tokens, my heads) -> [B, Ls, Nh·Dh] (my tokens, all heads)."""
        n = self.layout.size
        pad = self.padded - self.length
        if pad:
            out = torch.cat([out, out.new_zeros(out.shape[0], pad, out.shape[2])], dim=1)
        send = rearrange(out, "B (N Ls) (h Dh) -> N B Ls h Dh", N=n, Dh=head_dim)
        back = self._all_to_all(send)                                   # slice j: rank j's heads
        return rearrange(back, "N B Ls h Dh -> B Ls (N h Dh)")

    def attention(self, attn: AttentionFn) -> AttentionFn:
        """Self-attention over the whole sequence from token-sharded q, k, v [B, Ls, Nh, Dh]."""

        def sharded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            head_dim = q.shape[-1]
            out = attn(*(self.to_full_sequence(t) for t in (q, k, v)))  # [B, L, h·Dh]
            return self.to_local_tokens(out, head_dim)                  # [B, Ls, Nh·Dh]

        return sharded
