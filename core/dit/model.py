"""The Wan-family video DiT (Wan2.1 T2V/I2V, Wan2.2 TI2V-5B).

Module attribute names equal the official checkpoint keys (`patch_embedding`, `text_embedding.0`,
`time_embedding.0`, `time_projection.1`, `blocks.N.self_attn.q`, `head.head`, `img_emb.proj.0`, ...),
so loading a checkpoint is a strict `load_state_dict`.

    x [B, C_in, F, H, W] --patch_embedding (Conv3d, stride = patch)--> tokens [B, L, D]
    t [B] or [B, L] --sinusoid(256)--> time_embedding --> e [U, D] --time_projection--> [U, 6, D]
    context [B, Lc, 4096] --text_embedding--> [B, Lc, D]   (clip_fea [B, 257, 1280] --img_emb--> I2V)
    tokens --N × WanBlock--> head (2 modulation vectors from e) --unpatchify--> v [B, C_out, F, H, W]

The text context is used at the length it comes in (ComfyUI's choice). The official Wan code pads
it with zeros to 512 tokens, which the text MLP turns into non-zero keys; ComfyUI does not, and
since users bring ComfyUI's umT5 conditioning, we match ComfyUI. Pad `context` yourself to get the
official behaviour.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from .attention import get_attention_backend
from .block import WanBlock
from .config import DiTConfig
from .ops import CastOps, island_dtype
from .patching import token_grid, unpatchify
from .rope import grid_positions, rope_tables
from .timestep import TokenTimes, check_timesteps, sinusoidal_embedding, token_times

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class Head(nn.Module):
    """Final AdaLN (2 vectors: shift, scale from `modulation` + the time embedding) and the linear
    map from D to the pf·ph·pw·C_out values of a patch."""

    def __init__(self, config: DiTConfig, ops, **factory) -> None:
        super().__init__()
        self.norm = ops.LayerNorm(config.dim, eps=config.eps, elementwise_affine=False, **factory)
        self.head = ops.Linear(config.dim, math.prod(config.patch_size) * config.out_dim, **factory)
        self.modulation = nn.Parameter(torch.empty(1, 2, config.dim, **factory))

    def forward(self, x: torch.Tensor, times: TokenTimes, compute_dtype: torch.dtype) -> torch.Tensor:
        """x: [B, L, D] float32; times.table: [U, 1, D] time embeddings -> [B, L, pf·ph·pw·C_out]."""
        mods = self.modulation.to(x.dtype) + times.table                # [U, 2, D]
        shift, scale = times.pick(mods[:, 0]), times.pick(mods[:, 1])   # [B, Lt, D] each
        h = torch.addcmul(shift, self.norm(x), 1 + scale).to(compute_dtype)  # [B, L, D]
        return self.head(h)                                             # [B, L, pf·ph·pw·C]


class ImageEmbedding(nn.Module):
    """I2V: CLIP vision features [B, 257, 1280] -> image context tokens [B, 257, D]."""

    def __init__(self, config: DiTConfig, ops, **factory) -> None:
        super().__init__()
        d_in = config.image_dim
        # LayerNorm eps here is torch's default 1e-5, as in the reference (not config.eps).
        self.proj = nn.Sequential(ops.LayerNorm(d_in, **factory), ops.Linear(d_in, d_in, **factory),
                                  nn.GELU(), ops.Linear(d_in, config.dim, **factory),
                                  ops.LayerNorm(config.dim, **factory))

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        return self.proj(clip_fea)


class WanDiT(nn.Module):
    """Wan video DiT. forward(x, t, context, clip_fea=None) -> velocity shaped like x (C_out channels).

    Constructor injection as in ComfyUI: `device` and `dtype` are where and in which dtype the
    parameters are created (use device="meta" to build without memory, then load with assign=True),
    `operations` the layer classes (default CastOps: weights in any dtype, cast at use);
    `compute_dtype` the dtype of matmuls and attention; `attention` the backend name.
    """

    def __init__(self, config: DiTConfig, *, compute_dtype: torch.dtype = torch.float32,
                 attention: str = "sdpa", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, operations=CastOps) -> None:
        super().__init__()
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype} "
                             f"(fp8 is a storage format: pass it as the weight dtype)")
        get_attention_backend(attention)  # fail now, not at the first forward
        self.config = config
        self.compute_dtype = compute_dtype
        # The latent format this model was trained on, when its file names one (load_dit);
        # None: the published format of its latent width (latent_format_for(config.out_dim)).
        self.latent_format = None
        self.attention = attention
        ops, factory, dim = operations, {"device": device, "dtype": dtype}, config.dim
        self.patch_embedding = ops.Conv3d(config.in_dim, dim, kernel_size=config.patch_size,
                                          stride=config.patch_size, **factory)
        self.text_embedding = nn.Sequential(ops.Linear(config.text_dim, dim, **factory),
                                            nn.GELU(approximate="tanh"), ops.Linear(dim, dim, **factory))
        self.time_embedding = nn.Sequential(ops.Linear(config.freq_dim, dim, **factory), nn.SiLU(),
                                            ops.Linear(dim, dim, **factory))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim, **factory))
        self.blocks = nn.ModuleList(WanBlock(config, ops, **factory) for _ in range(config.num_layers))
        self.head = Head(config, ops, **factory)
        if config.has_image_branch:
            self.img_emb = ImageEmbedding(config, ops, **factory)
        if not self.head.modulation.is_meta:
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """Fresh weights for training from scratch, AdaLN-Zero style.

        Linear and patch-embedding weights get Xavier-uniform, biases zero, norm gains one, the
        text/time MLPs N(0, 0.02). Then the parts that write into the residual stream start at zero:
        `time_projection` (so the timestep modulation starts at 0), every block's `modulation`
        (gates 0: the attention and FFN branches add nothing), every `cross_attn.o` (Wan's
        cross-attention has no gate, so its output layer is zeroed instead) and the head. Hence a
        fresh model outputs zeros and every block is the identity.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for mlp in (self.text_embedding, self.time_embedding):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        zeroed = [self.time_projection[1], self.head.head] + [b.cross_attn.o for b in self.blocks]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for param in [self.head.modulation] + [b.modulation for b in self.blocks]:
            nn.init.zeros_(param)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
                clip_fea: torch.Tensor | None = None, *, sequence=None,
                cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """Velocity v = ε − x0 for the noisy latent x.

        x: [B, C_in, F, H, W]; t: [B] or [B, L] (also [B, F] or a number), 1000·σ in 0..1000;
        context: [B, Lc, text_dim] text embeddings; clip_fea: [B, 257, 1280] CLIP vision features,
        required by I2V models only. Returns [B, C_out, F, H, W] in the dtype of x.
        sequence: a `core.parallel.ulysses.SequenceParallel` to split the tokens over its ranks
        (each computes L/N tokens; the result is gathered, the same on every rank), or None.
        cancel: called before every block and before the head; it raises to stop the forward (a
        cancel from the UI), so a long step stops within one block, not one step. With
        `sequence`, every rank must get the same answer (else the others wait in a collective).
        """
        cfg, compute = self.config, self.compute_dtype
        island = island_dtype(compute)
        grid = self._check_inputs(x, context, clip_fea)
        t = check_timesteps(t, x.shape[0], grid[0], math.prod(grid)).to(x.device)
        attn = get_attention_backend(self.attention)

        tokens = self.patch_embedding(x.to(island))                      # [B, D, F', H', W']
        # contiguous: the residual stream keeps the layout it starts with, and a transposed one
        # makes every later elementwise op and norm slow.
        tokens = rearrange(tokens, "B D F H W -> B (F H W) D").contiguous()  # [B, L, D]
        values, index = token_times(t)                                   # [U], [B, Lt]
        e = self.time_embedding(sinusoidal_embedding(values, cfg.freq_dim).to(island))  # [U, D]
        e6 = rearrange(self.time_projection(e), "U (S D) -> U S D", S=6)  # [U, 6, D]
        context = self.text_embedding(context.to(compute))               # [B, Lc, D]
        context_img = self.img_emb(clip_fea.to(compute)) if clip_fea is not None else None
        rope = rope_tables(grid_positions(*grid, device=x.device), cfg.head_dim, cfg.rope_theta,
                           dtype=island)                                 # [L, 1, Dh/2] complex

        times, self_attn = TokenTimes(e6, index), attn
        if sequence is not None:           # Ulysses: this rank keeps Ls = L/N of the tokens
            plan = sequence.for_length(tokens.shape[1])
            tokens, rope = plan.shard(tokens, dim=1), plan.shard(rope, dim=0)  # [B, Ls, D], [Ls, 1, Dh/2]
            if index.shape[1] > 1:                                       # per-token timesteps
                times = TokenTimes(e6, plan.shard(index, dim=1))         # [B, Ls]
            self_attn = plan.attention(attn)
        for block in self.blocks:
            if cancel is not None:
                cancel()
            tokens = block(tokens, times, context, context_img, rope, attn, compute,
                           self_attn=self_attn)                          # [B, L or Ls, D]
        if cancel is not None:
            cancel()
        out = self.head(tokens, times.with_table(e[:, None]), compute)   # [B, L or Ls, pf·ph·pw·C]
        if sequence is not None:
            out = plan.gather(out, dim=1)                                # [B, L, pf·ph·pw·C]
        return unpatchify(out, grid, cfg.patch_size).to(x.dtype)        # [B, C_out, F, H, W]

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor,
                      clip_fea: torch.Tensor | None) -> tuple[int, int, int]:
        """Raise a clear error for inputs this model cannot take; return the token grid."""
        cfg = self.config
        for name, value in (("x", x), ("context", context)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point latent, got dtype {x.dtype}")
        if x.ndim != 5:
            raise ValueError(f"x must be a latent video [B, C, F, H, W], got shape {list(x.shape)}; "
                             f"add a batch dimension with x[None] if you have one video")
        if x.shape[1] != cfg.in_dim:
            raise ValueError(
                f"the latent has {x.shape[1]} channels but this {cfg.model_type} model takes "
                f"{cfg.in_dim}; use the VAE that matches the model (Wan2.1 VAE: 16 channels, "
                f"Wan2.2 VAE: 48; I2V models take 16 noise + 4 mask + 16 image channels)")
        sizes = dict(zip(("frames", "height", "width"), x.shape[2:]))
        for (name, size), p in zip(sizes.items(), cfg.patch_size):
            if size % p:
                raise ValueError(f"latent {name} {size} is not divisible by the patch size {p}; "
                                 f"choose a {name} whose latent size is a multiple of {p} "
                                 f"(pixel sizes a multiple of {p} × the VAE's stride)")
        if context.ndim != 3 or context.shape[-1] != cfg.text_dim:
            raise ValueError(f"context must be text embeddings [B, L_text, {cfg.text_dim}], got "
                             f"shape {list(context.shape)}; use the umT5-XXL text encoder "
                             f"(ComfyUI CLIPLoader type 'wan')")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context has batch {context.shape[0]} but x has batch {x.shape[0]}; "
                             f"give one text embedding per latent")
        if cfg.has_image_branch:
            if clip_fea is None:
                raise ValueError("this I2V model needs clip_fea, the CLIP vision features of the "
                                 "start image [B, 257, 1280]; connect a CLIP vision encoding")
            if (not isinstance(clip_fea, torch.Tensor) or clip_fea.ndim != 3
                    or clip_fea.shape[0] != x.shape[0] or clip_fea.shape[-1] != cfg.image_dim):
                shape = list(clip_fea.shape) if isinstance(clip_fea, torch.Tensor) else type(clip_fea).__name__
                raise ValueError(f"clip_fea must be [B={x.shape[0]}, tokens, {cfg.image_dim}] CLIP "
                                 f"vision features, got {shape}")
        elif clip_fea is not None:
            raise ValueError(f"this {cfg.model_type} model has no image branch, but clip_fea was "
                             f"given; leave it out (only Wan2.1 I2V models use CLIP vision features)")
        return token_grid(tuple(x.shape), cfg.patch_size)
