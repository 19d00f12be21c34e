"""Configuration of the Wan causal 3D VAE (Wan2.1 and Wan2.2), presets, and detection of the
configuration from a state dict (works on meta tensors: only key names and shapes are read).

Key layout facts used by `detect_config` (official `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` and
ComfyUI's repackaged `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors` share them):

    decoder.middle.0.residual.0.gamma            present in both versions       (MARKER_KEY)
    decoder.upsamples.0.upsamples.0.residual.*   Wan2.2 only (nested up blocks) (WAN22_MARKER)
    encoder.conv1.weight          [dim, image_channels * patch**2, 3, 3, 3]
    decoder.head.0.gamma          [dec_dim, 1, 1, 1]
    conv2.weight                  [z_dim, z_dim, 1, 1, 1]
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

MARKER_KEY = "decoder.middle.0.residual.0.gamma"
WAN22_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"


@dataclass(frozen=True)
class VAEConfig:
    version: str = "2.1"            # "2.1": flat resample blocks; "2.2": residual up/down blocks
    dim: int = 96                   # encoder base width; level widths are dim * dim_mult[i]
    dec_dim: int = 96               # decoder base width (Wan2.1: equal to dim; Wan2.2: 256)
    z_dim: int = 16                 # latent channels (the encoder head emits 2*z_dim: mean, logvar)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)   # width multiplier per resolution level
    num_res_blocks: int = 2         # residual blocks per encoder level (decoder uses one more)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per down level: halve time too
    image_channels: int = 3         # RGB
    patch_size: int = 1             # Wan2.2 folds 2x2 pixels into channels (3 -> 12) first

    def __post_init__(self):
        if self.version not in ("2.1", "2.2"):
            raise ValueError(f"VAE version must be '2.1' or '2.2', got {self.version!r}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per downsampling level "
                f"({len(self.dim_mult) - 1}), got {len(self.temporal_downsample)}")
        if self.version == "2.1" and self.dec_dim != self.dim:
            raise ValueError(f"Wan2.1 VAE uses one width for encoder and decoder; got dim="
                             f"{self.dim}, dec_dim={self.dec_dim}")
        if self.version == "2.1" and any(m * self.dim % 2 for m in self.dim_mult):
            # The Wan2.1 up-sampling convolutions halve the width.
            raise ValueError("Wan2.1 VAE level widths dim*dim_mult must be even")
        if self.patch_size not in (1, 2):
            raise ValueError(f"patch_size must be 1 or 2, got {self.patch_size}")
        if min(self.dim, self.dec_dim, self.z_dim, self.num_res_blocks, self.image_channels) < 1:
            raise ValueError(f"VAE sizes must be positive: {self}")

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent pixel along H and W (8 for Wan2.1, 16 for Wan2.2)."""
        return 2 ** (len(self.dim_mult) - 1) * self.patch_size

    @property
    def temporal_stride(self) -> int:
        """Pixel frames per latent frame after the first (4 for both versions)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def in_channels(self) -> int:
        """Channels the encoder's first convolution sees (after the pixel patchify)."""
        return self.image_channels * self.patch_size ** 2

    def __str__(self) -> str:
        mult = "x".join(str(m) for m in self.dim_mult)
        width = f"dim {self.dim}" if self.dim == self.dec_dim else f"dim {self.dim}/{self.dec_dim}"
        return (f"Wan{self.version} VAE ({width}, mult {mult}, z {self.z_dim}, "
                f"stride {self.temporal_stride}x{self.spatial_stride}x{self.spatial_stride})")


PRESETS: dict[str, VAEConfig] = {
    # The published models.
    "wan2.1": VAEConfig(),
    "wan2.2": VAEConfig(version="2.2", dim=160, dec_dim=256, z_dim=48, patch_size=2),
    # The pack's own small default model: Wan2.1 layout and latent space, narrow.
    "flowdit-small": VAEConfig(dim=32, dec_dim=32),
    # Tests only: the narrowest widths that keep every code path (attention, shortcuts).
    "test-2.1": VAEConfig(dim=4, dec_dim=4),
    "test-2.2": VAEConfig(version="2.2", dim=4, dec_dim=8, z_dim=48, patch_size=2),
}


def _shape(sd: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def _block_kinds(sd: dict[str, torch.Tensor], prefix: str) -> dict[int, str]:
    """{index: kind} of the blocks `prefix.<index>.*`, kind being 'res' (residual block),
    'time' (resample with a time convolution), 'space' (spatial-only resample) or 'attn'."""
    kinds: dict[int, str] = {}
    rx = re.compile(re.escape(prefix) + r"\.(\d+)\.([a-z_]+)\..*")
    for key in sd:
        m = rx.fullmatch(key)
        if not m:
            continue
        index, part = int(m.group(1)), m.group(2)
        kind = {"residual": "res", "time_conv": "time", "resample": "space",
                "to_qkv": "attn"}.get(part)
        if kind and not (kind == "space" and kinds.get(index) == "time"):
            kinds[index] = kind
    return kinds


def detect_config(sd: dict[str, torch.Tensor]) -> VAEConfig:
    """The VAE configuration of a state dict in the official key layout (prefixes tolerated).

    Raises ValueError naming what was expected and what was found for anything that is not a
    Wan2.1/Wan2.2 VAE.
    """
    from ..checkpoint import strip_prefix

    sd = strip_prefix(sd, marker_key=MARKER_KEY)
    try:
        return _detect(sd)
    except (KeyError, IndexError) as err:  # a key the layout implies is absent: damaged file
        raise ValueError(f"incomplete Wan VAE state dict: {err} is missing") from err


def _detect(sd: dict[str, torch.Tensor]) -> VAEConfig:
    from ..checkpoint import summarize_keys

    needed = (MARKER_KEY, "encoder.conv1.weight", "decoder.head.0.gamma", "conv2.weight")
    if not all(k in sd for k in needed):
        raise ValueError(f"expected a Wan VAE state dict with keys like {MARKER_KEY!r}, "
                         f"found {summarize_keys(sd)}")
    version = "2.2" if WAN22_MARKER in sd else "2.1"
    conv_in = _shape(sd, "encoder.conv1.weight")
    dim, in_ch = conv_in[0], conv_in[1]
    dec_dim = _shape(sd, "decoder.head.0.gamma")[0]
    z_dim = _shape(sd, "conv2.weight")[0]
    if version == "2.1":
        # One flat sequence of blocks; a resample block closes each level but the last.
        levels: list[list[tuple[int, str]]] = [[]]
        for index, kind in sorted(_block_kinds(sd, "encoder.downsamples").items()):
            levels[-1].append((index, kind))
            if kind in ("time", "space"):
                levels.append([])
    else:
        rx = re.compile(r"encoder\.downsamples\.(\d+)\.downsamples\..*")
        n_levels = 1 + max((int(m.group(1)) for k in sd if (m := rx.fullmatch(k))), default=-1)
        levels = [sorted(_block_kinds(sd, f"encoder.downsamples.{i}.downsamples").items())
                  for i in range(n_levels)]
    if any(kind == "attn" for level in levels for _, kind in level):
        raise ValueError("this Wan VAE has attention inside its resolution levels "
                         "(attn_scales), which no published Wan VAE uses; not supported")
    res_counts = {sum(kind == "res" for _, kind in level) for level in levels}
    if len(res_counts) != 1 or len(levels) < 2:
        raise ValueError(f"unexpected Wan VAE encoder layout: levels {levels}")
    temporal = tuple(level[-1][1] == "time" for level in levels[:-1])
    # Level widths: the output width of each level's last residual block.
    widths = []
    for li, level in enumerate(levels):
        last_res = max(i for i, kind in level if kind == "res")
        key = (f"encoder.downsamples.{last_res}.residual.6.weight" if version == "2.1" else
               f"encoder.downsamples.{li}.downsamples.{last_res}.residual.6.weight")
        widths.append(_shape(sd, key)[0])
    if any(w % dim for w in widths):
        raise ValueError(f"Wan VAE level widths {widths} are not multiples of the base {dim}")
    patch = 2 if version == "2.2" else 1
    if in_ch % (patch * patch):
        raise ValueError(f"encoder input channels {in_ch} do not fit a {patch}x{patch} patchify")
    return VAEConfig(version=version, dim=dim, dec_dim=dec_dim, z_dim=z_dim,
                     dim_mult=tuple(w // dim for w in widths), num_res_blocks=res_counts.pop(),
                     temporal_downsample=temporal, image_channels=in_ch // (patch * patch),
                     patch_size=patch)


def preset(name: str, **overrides) -> VAEConfig:
    """A named configuration, optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown VAE preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
