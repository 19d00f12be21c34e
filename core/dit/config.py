"""The DiT configuration, the named presets, and detection of the configuration from the keys and
shapes of a (prefix-stripped) state dict alone, so the user never types a config.

Detection needs only shapes, so it works on meta tensors (`read_state_dict(path, device="meta")`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import torch

from ..checkpoint import strip_prefix, summarize_keys

MODEL_TYPES = ("t2v", "i2v", "ti2v")

# Every released Wan2.1/2.2 DiT uses 128-wide attention heads (num_heads = dim / 128), and ComfyUI
# and the official code assume it at every width; no key stores the head count. Files written by
# this pack (which has narrower heads in its small models) carry it in their safetensors metadata
# under this name, and detection prefers that when present.
WAN_HEAD_DIM = 128
NUM_HEADS_METADATA_KEY = "num_heads"
# Wan2.2 TI2V-5B works in the 48-channel latent space of the Wan2.2 VAE.
TI2V_CHANNELS = 48
# Width of the CLIP ViT-H/14 penultimate features that the I2V image branch consumes (257 tokens).
CLIP_VISION_DIM = 1280

# A key every Wan DiT has: finds the DiT under a prefix in whole-pipeline files with several models.
MARKER_KEY = "head.modulation"
# Keys every Wan DiT has; their absence means the file is some other model.
REQUIRED_KEYS = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                 "time_projection.1.weight", "head.head.weight", "head.modulation",
                 "blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight", "blocks.0.modulation")

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a Wan-family video DiT. Field names follow the official Wan code."""

    model_type: str = "t2v"              # 't2v' text-to-video, 'i2v' image-to-video, 'ti2v' Wan2.2 48-ch
    patch_size: tuple[int, int, int] = (1, 2, 2)  # latent (frames, height, width) folded into one token
    in_dim: int = 16                     # latent channels fed in (i2v: 16 noise + 4 mask + 16 image = 36)
    out_dim: int = 16                    # latent channels of the predicted velocity
    dim: int = 1536                      # transformer width D
    ffn_dim: int = 8960                  # hidden width of each block's GELU MLP
    freq_dim: int = 256                  # width of the sinusoidal timestep embedding
    text_dim: int = 4096                 # width of the text context (umT5-XXL hidden size)
    num_heads: int = 12                  # attention heads Nh; head dim Dh = dim / num_heads
    num_layers: int = 30                 # number of transformer blocks
    eps: float = 1e-6                    # epsilon of the LayerNorms and q/k RMSNorms
    qk_norm: bool = True                 # RMSNorm on queries and keys (all released Wan models)
    cross_attn_norm: bool = True         # affine LayerNorm `norm3` before cross-attention
    image_dim: int = CLIP_VISION_DIM     # width of CLIP vision features; used only when model_type == 'i2v'
    rope_theta: float = 10000.0          # RoPE base frequency
    # i2v only: True for Wan2.1 I2V (CLIP vision features through `img_emb`, `k_img`/`v_img`),
    # False for Wan2.2 I2V-A14B experts, which see the start image only in the concat channels.
    image_branch: bool = True

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if len(self.patch_size) != 3 or any(int(p) < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be three positive ints (F, H, W), got {self.patch_size}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if not isinstance(self.image_branch, bool):
            raise TypeError(f"image_branch must be True or False, got {self.image_branch!r}")
        if self.model_type != "i2v":  # meaningful for i2v only: one spelling for the others
            object.__setattr__(self, "image_branch", True)
        for name in ("in_dim", "out_dim", "dim", "ffn_dim", "freq_dim", "text_dim", "num_heads",
                     "num_layers", "image_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even (cos and sin halves), got {self.freq_dim}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} does not split into {self.num_heads} heads")
        head_dim = self.dim // self.num_heads
        # 3D RoPE rotates pairs of channels and gives each of the 3 axes at least one pair.
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"head dim {head_dim} (= dim / num_heads) must be even and at least 6 "
                             f"for the 3D RoPE split between frame, height and width")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.model_type == "ti2v" and self.in_dim != self.out_dim:
            raise ValueError(f"a ti2v model denoises its own latent: in_dim ({self.in_dim}) must "
                             f"equal out_dim ({self.out_dim})")
        if self.model_type == "i2v" and self.in_dim <= self.out_dim:
            raise ValueError(f"an i2v model takes the noisy latent plus mask and image channels: "
                             f"in_dim ({self.in_dim}) must exceed out_dim ({self.out_dim})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def has_image_branch(self) -> bool:
        """Whether the model has `img_emb` and `k_img`/`v_img` for CLIP vision features."""
        return self.model_type == "i2v" and self.image_branch

    def __str__(self) -> str:
        kind = self.model_type
        if kind == "i2v" and not self.image_branch:
            kind = "i2v (no CLIP branch)"
        return (f"Wan DiT {kind}: dim {self.dim}, {self.num_layers} layers, "
                f"{self.num_heads} heads, ffn {self.ffn_dim}, in/out channels "
                f"{self.in_dim}/{self.out_dim}, text width {self.text_dim}")


PRESETS: Mapping[str, DiTConfig] = MappingProxyType({
    "wan2.1-t2v-1.3b": DiTConfig("t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": DiTConfig("t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.1-i2v-14b": DiTConfig("i2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40,
                                num_layers=40),
    # Wan2.2 A14B: two experts per model (high noise, low noise), each with Wan2.1-14B shapes.
    "wan2.2-t2v-a14b": DiTConfig("t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.2-i2v-a14b": DiTConfig("i2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40,
                                 num_layers=40, image_branch=False),
    "wan2.2-ti2v-5b": DiTConfig("ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336,
                                num_heads=24, num_layers=30),
    # Tiny models for tests: head dim 32 splits 12/10/10 between the RoPE axes.
    "tiny-t2v": DiTConfig("t2v", dim=64, ffn_dim=128, num_heads=2, num_layers=2),
    "tiny-i2v": DiTConfig("i2v", in_dim=36, dim=64, ffn_dim=128, num_heads=2, num_layers=2),
    "tiny-i2v-a14b": DiTConfig("i2v", in_dim=36, dim=64, ffn_dim=128, num_heads=2, num_layers=2,
                               image_branch=False),
    "tiny-ti2v": DiTConfig("ti2v", in_dim=48, out_dim=48, dim=64, ffn_dim=128, num_heads=2,
                           num_layers=2),
})


def get_preset(name: str, **overrides) -> DiTConfig:
    """A preset by name, optionally with some fields replaced (e.g. num_layers=2)."""
    if name not in PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def heads_for_dim(dim: int) -> int:
    """The head count of a Wan model of width `dim` whose file does not say (see WAN_HEAD_DIM)."""
    if dim % WAN_HEAD_DIM:
        raise ValueError(
            f"model width {dim} is not a multiple of {WAN_HEAD_DIM}, the head width of every "
            f"released Wan model, and the file does not store its head count (safetensors "
            f"metadata '{NUM_HEADS_METADATA_KEY}'); a file made by this pack carries it — re-save "
            f"the model with core.dit.save_dit, or use an official Wan checkpoint")
    return dim // WAN_HEAD_DIM


def num_heads_from_metadata(metadata: Mapping[str, str] | None) -> int | None:
    """The head count a file's safetensors metadata records (written by `dit_metadata`), or None."""
    if not metadata or NUM_HEADS_METADATA_KEY not in metadata:
        return None
    value = metadata[NUM_HEADS_METADATA_KEY]
    try:
        heads = int(value)
    except (TypeError, ValueError):
        heads = 0
    if heads < 1:
        raise ValueError(f"the file's metadata says num_heads = {value!r}, which is not a positive "
                         f"integer; the file is damaged — re-save it")
    return heads


def dit_metadata(config: DiTConfig) -> dict[str, str]:
    """Safetensors metadata every DiT file written by this pack carries (the head count)."""
    return {NUM_HEADS_METADATA_KEY: str(config.num_heads)}


def _model_type(in_dim: int, out_dim: int, has_image: bool) -> tuple[str, bool]:
    """(model_type, image_branch) from the channel counts and the presence of `img_emb`.

    in == out == 48: Wan2.2 TI2V-5B. An `img_emb`: Wan2.1 I2V (CLIP branch). in == 2·out + 4 without
    `img_emb` (36 = 16 noise + 4 mask + 16 image): a Wan2.2 I2V-A14B expert (or Fun-InP, same layout).
    """
    if has_image:
        return "i2v", True
    if in_dim == out_dim == TI2V_CHANNELS:
        return "ti2v", True
    if in_dim == 2 * out_dim + 4:
        return "i2v", False
    return "t2v", True


# What a file of each released shape can be. The Wan2.2 A14B experts share their shapes (and with
# the T2V ones, Wan2.1-14B's): a file cannot tell which expert it is, only its name can.
_EXPERT_NOTE = ("it can serve as the high-noise or the low-noise expert (both have identical "
                "shapes; the file name says which — the user picks which is which)")


def describe_variant(config: DiTConfig) -> str:
    """Which released model(s) a detected configuration matches, in words (for `core info`)."""
    names = [name for name, preset in PRESETS.items() if preset == config]
    if config == PRESETS["wan2.2-i2v-a14b"]:
        return f"Wan2.2 I2V-A14B expert (image-to-video, no CLIP image branch); {_EXPERT_NOTE}"
    if config == PRESETS["wan2.2-t2v-a14b"]:
        return (f"Wan2.1 T2V-14B or a Wan2.2 T2V-A14B expert (text-to-video); as an A14B expert "
                f"{_EXPERT_NOTE}")
    if names:
        note = f"; as a Wan2.2 A14B-style expert {_EXPERT_NOTE}" if not config.has_image_branch \
            and config.model_type == "i2v" else ""
        return "preset " + " / ".join(names) + note
    if config.model_type == "i2v" and not config.image_branch:
        return (f"an I2V model without CLIP branch (Wan2.2 I2V-A14B / Fun-InP layout) at a "
                f"non-standard size; as an A14B expert {_EXPERT_NOTE}")
    return "no released Wan preset has these shapes (a custom or trimmed model)"


def detect_config(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> DiTConfig:
    """The DiTConfig of a Wan DiT state dict, from key names and shapes only.

    Keys may carry a repackaging prefix (`model.diffusion_model.`, ...), which is ignored.
    num_heads: the head count when known (a file's metadata, see `num_heads_from_metadata`);
    otherwise dim / 128, the head width of every released Wan model.
    """
    sd = strip_prefix(dict(sd), marker_key=MARKER_KEY)
    missing = [k for k in REQUIRED_KEYS if k not in sd]
    if missing:
        raise ValueError(
            f"not a Wan DiT state dict: expected keys such as {', '.join(REQUIRED_KEYS[:4])}, "
            f"but {', '.join(missing[:3])} are missing; found keys: {summarize_keys(sd.keys())}")
    head = sd["head.head.weight"].shape
    patch = tuple(sd["patch_embedding.weight"].shape[2:])
    dim, in_dim = sd["patch_embedding.weight"].shape[:2]
    if len(patch) != 3 or head[0] % max(1, math.prod(patch)):
        raise ValueError(f"patch_embedding.weight has shape {tuple(sd['patch_embedding.weight'].shape)} "
                         f"and head.head.weight {tuple(head)}; expected a 3D patch "
                         f"[dim, in_dim, pf, ph, pw] and a head of pf*ph*pw*out_dim rows")
    out_dim = head[0] // math.prod(patch)
    num_layers = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k)))
    if any(f"blocks.{i}.modulation" not in sd for i in range(num_layers)):
        raise ValueError(f"the block numbering has gaps (expected blocks 0..{num_layers - 1}); "
                         f"the checkpoint is incomplete — download it again")
    has_image = "img_emb.proj.0.weight" in sd
    model_type, image_branch = _model_type(int(in_dim), int(out_dim), has_image)
    return DiTConfig(
        model_type=model_type, image_branch=image_branch, patch_size=patch, in_dim=int(in_dim),
        out_dim=int(out_dim), dim=int(dim), ffn_dim=int(sd["blocks.0.ffn.0.weight"].shape[0]),
        freq_dim=int(sd["time_embedding.0.weight"].shape[1]),
        text_dim=int(sd["text_embedding.0.weight"].shape[1]),
        num_heads=heads_for_dim(int(dim)) if num_heads is None else int(num_heads),
        num_layers=num_layers,
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
        cross_attn_norm="blocks.0.norm3.weight" in sd,
        image_dim=int(sd["img_emb.proj.0.weight"].shape[0]) if has_image else CLIP_VISION_DIM)

