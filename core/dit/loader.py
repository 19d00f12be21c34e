"""Loading a Wan DiT from a checkpoint file or state dict: read safely, strip repackaging prefixes,
detect the configuration, build on the meta device and load with assignment (no second copy of
the weights, no upcast of a bf16/fp8 checkpoint unless asked).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

import torch

from ..checkpoint import find_non_finite, read_metadata, read_state_dict, strip_prefix, summarize_keys
from ..vae.latent_format import format_from_metadata
from .config import MARKER_KEY, DiTConfig, detect_config, dit_metadata, num_heads_from_metadata
from .model import WanDiT
from .scaled_fp8 import (WEIGHT_SCALE, dequantize, install_scaled_layers, is_scaled_fp8,
                         set_fp8_matmul, split_scaled_fp8)

DTYPE_NAMES: Mapping[str, torch.dtype] = MappingProxyType({
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "fp64": torch.float64, "float64": torch.float64,
    "fp8_e4m3fn": torch.float8_e4m3fn, "float8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2, "float8_e5m2": torch.float8_e5m2,
})
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64,
                 torch.float8_e4m3fn, torch.float8_e5m2)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or a name such as 'bf16', 'fp32', 'fp8_e4m3fn'."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_NAMES)}")


def read_dit_state_dict(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                        device: torch.device | str = "cpu", num_heads: int | None = None
                        ) -> tuple[dict[str, torch.Tensor], DiTConfig, tuple[str, ...]]:
    """(state dict, config, scaled-fp8 layer names) of a DiT file or state dict: prefixes
    stripped, ComfyUI's fp8_scaled layouts normalised (see core/dit/scaled_fp8.py), the head count
    taken from `num_heads`, else the file's metadata, else dim / 128. device="meta": shapes only."""
    sd = strip_prefix(read_state_dict(path_or_state_dict, device=device), marker_key=MARKER_KEY)
    metadata = {}
    if not isinstance(path_or_state_dict, Mapping):
        metadata = read_metadata(path_or_state_dict)
    scaled: tuple[str, ...] = ()
    if is_scaled_fp8(sd, metadata):
        sd, info = split_scaled_fp8(sd, metadata)
        scaled = info.layers
    if num_heads is None:
        num_heads = num_heads_from_metadata(metadata)
    return sd, detect_config(sd, num_heads=num_heads), scaled


def load_dit(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
             device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None,
             attention: str = "sdpa", weight_dtype: torch.dtype | str | None = None,
             num_heads: int | None = None, fp8_matmul: bool = False) -> WanDiT:
    """Build the Wan DiT stored in a checkpoint; the configuration is detected from its keys.

    dtype: compute dtype (fp32, bf16, fp16); default: the checkpoint's weight dtype (bf16 for fp8).
    weight_dtype: storage dtype of the linear-layer weight matrices (e.g. fp8_e4m3fn to halve the
    memory of bf16); default: as stored, narrowed to `dtype` when that is narrower (an fp32 file
    loaded for bf16 compute is stored in bf16; a bf16 or fp8 file is never upcast). Other
    parameters (norms, biases, modulation, patch embedding) keep their stored dtype.
    ComfyUI's fp8_scaled files keep their fp8 weights and scales (dequantised layer by layer at
    use) unless weight_dtype names a 16/32-bit dtype, which dequantises them once at load.
    num_heads: the head count, for a state dict whose width is not a multiple of 128 (files
    written by this pack record it in their metadata; others have 128-wide heads).
    fp8_matmul: run fp8_scaled layers with torch._scaled_mm where the GPU supports it (CUDA
    capability 8.9+); elsewhere the weights are dequantised to the compute dtype as usual.
    A state dict given in memory is used in place where device and dtype already match.
    """
    dtype, weight_dtype = parse_dtype(dtype), parse_dtype(weight_dtype)
    if weight_dtype is not None and weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype {weight_dtype} is not supported; use one of {WEIGHT_DTYPES}")
    sd, config, scaled = read_dit_state_dict(path_or_state_dict, device=device, num_heads=num_heads)
    if dtype is None:
        stored = sd["blocks.0.ffn.0.weight"].dtype
        dtype = torch.bfloat16 if stored in FP8_DTYPES else stored
    if scaled and weight_dtype is not None and weight_dtype not in FP8_DTYPES:
        for name in scaled:  # dequantise once: plain layers in the asked-for dtype
            w, scale = sd[f"{name}.weight"], sd.pop(f"{name}.{WEIGHT_SCALE}")
            sd.pop(f"{name}.input_scale", None)
            sd[f"{name}.weight"] = dequantize(w.to(device), scale, torch.float32)
        scaled = ()
    model = WanDiT(config, compute_dtype=dtype, attention=attention, device="meta")
    install_scaled_layers(model, sd, scaled)
    _check_keys(sd, model, config)
    scaled_keys = {f"{name}.weight" for name in scaled}
    for key, value in sd.items():
        target = value.dtype
        if key in scaled_keys or key.endswith((".weight_scale", ".input_scale")):
            pass                                                        # fp8 + float32 scales
        elif value.ndim == 2 and key.endswith(".weight"):               # linear-layer matrices
            if weight_dtype is not None:
                target = weight_dtype
            elif value.dtype.itemsize > dtype.itemsize:
                target = dtype
        sd[key] = value.to(device=device, dtype=target)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise ValueError(f"the checkpoint's tensor shapes do not fit the detected {config}: "
                         f"{'; '.join(lines[:3]) or err}") from err
    bad = find_non_finite(model.state_dict())
    if bad is not None:
        raise ValueError(f"the DiT weight {bad!r} holds NaN or infinite values; the file is "
                         f"damaged — download it again")
    if fp8_matmul:
        set_fp8_matmul(model, True)
    if not isinstance(path_or_state_dict, Mapping):     # a file may name its own latent format
        name = os.path.basename(os.fspath(path_or_state_dict))
        model.latent_format = format_from_metadata(read_metadata(path_or_state_dict), name)
        if model.latent_format is not None and model.latent_format.channels != config.out_dim:
            raise ValueError(f"{name}: its latent format {model.latent_format.name!r} has "
                             f"{model.latent_format.channels} channels but the DiT outputs "
                             f"{config.out_dim}; the file is inconsistent")
    return model.eval()


def save_dit(state_dict_or_model: Mapping[str, torch.Tensor] | torch.nn.Module,
             path: str | os.PathLike, config: DiTConfig | None = None,
             metadata: Mapping[str, str] | None = None) -> os.PathLike:
    """Write a DiT as .safetensors (atomically) with the metadata every DiT file of this pack
    carries (`num_heads`, see `dit_metadata`). config: needed for a plain state dict."""
    from ..train.checkpointing import save_tensors

    if isinstance(state_dict_or_model, torch.nn.Module):
        config = config or state_dict_or_model.config
        sd = state_dict_or_model.state_dict()
    else:
        sd = dict(state_dict_or_model)
    if config is None:
        raise ValueError("save_dit needs the DiTConfig of a plain state dict (for its head count)")
    return save_tensors(sd, path, metadata={**(metadata or {}), **dit_metadata(config)})


def _check_keys(sd: Mapping[str, torch.Tensor], model: WanDiT, config) -> None:
    """A readable error when the keys are not exactly this architecture's (no raw key dump)."""
    expected = set(model.state_dict())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if not missing and not unexpected:
        return
    hint = ""
    if any(k.split(".")[0] in ("vace_blocks", "vace_patch_embedding", "control_adapter",
                                 "casual_audio_encoder", "audio_proj", "face_adapter", "ref_conv")
             for k in unexpected) or "img_emb.emb_pos" in unexpected:
        hint = (" It looks like a Wan variant this pack does not support (VACE, camera control, "
                "speech-to-video, animate, first-last-frame); use a T2V, I2V or TI2V checkpoint.")
    raise ValueError(
        f"the checkpoint's keys do not match a {config}: missing {len(missing)} "
        f"({summarize_keys(missing, 4)}), unexpected {len(unexpected)} "
        f"({summarize_keys(unexpected, 4)}).{hint or ' The file may be incomplete; download it again.'}")
