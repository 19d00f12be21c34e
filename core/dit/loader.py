"""Loading a Wan DiT from a checkpoint file or state dict: read safely, strip repackaging prefixes,
detect the configuration, build on the meta device and load with assignment (no second copy of
the weights, no upcast of a bf16/fp8 checkpoint unless asked).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

import torch

from ..checkpoint import read_state_dict, strip_prefix, summarize_keys
from .config import MARKER_KEY, detect_config
from .model import WanDiT

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


def load_dit(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
             device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None,
             attention: str = "sdpa", weight_dtype: torch.dtype | str | None = None) -> WanDiT:
    """Build the Wan DiT stored in a checkpoint; the configuration is detected from its keys.

    dtype: compute dtype (fp32, bf16, fp16); default: the checkpoint's weight dtype (bf16 for fp8).
    weight_dtype: storage dtype of the linear-layer weight matrices (e.g. fp8_e4m3fn to halve the
    memory of bf16); default: as stored, narrowed to `dtype` when that is narrower (an fp32 file
    loaded for bf16 compute is stored in bf16; a bf16 or fp8 file is never upcast). Other
    parameters (norms, biases, modulation, patch embedding) keep their stored dtype.
    A state dict given in memory is used in place where device and dtype already match.
    """
    dtype, weight_dtype = parse_dtype(dtype), parse_dtype(weight_dtype)
    if weight_dtype is not None and weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight dtype {weight_dtype} is not supported; use one of {WEIGHT_DTYPES}")
    sd = strip_prefix(read_state_dict(path_or_state_dict, device=device), marker_key=MARKER_KEY)
    config = detect_config(sd)
    if dtype is None:
        stored = sd["blocks.0.ffn.0.weight"].dtype
        dtype = torch.bfloat16 if stored in FP8_DTYPES else stored
    model = WanDiT(config, compute_dtype=dtype, attention=attention, device="meta")
    _check_keys(sd, model, config)
    for key, value in sd.items():
        target = value.dtype
        if value.ndim == 2 and key.endswith(".weight"):                 # linear-layer matrices
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
    return model.eval()


def _check_keys(sd: Mapping[str, torch.Tensor], model: WanDiT, config) -> None:
    """A readable error when the keys are not exactly this architecture's (no raw key dump)."""
    expected = set(model.state_dict())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if not missing and not unexpected:
        return
    hint = ""
    if any(k.endswith("scale_weight") or k == "scaled_fp8" for k in unexpected):
        hint = " This is a 'scaled fp8' file, which is not supported yet; use a bf16 or plain fp8 file."
    elif any(k.split(".")[0] in ("vace_blocks", "vace_patch_embedding", "control_adapter",
                                 "casual_audio_encoder", "audio_proj", "face_adapter", "ref_conv")
             for k in unexpected) or "img_emb.emb_pos" in unexpected:
        hint = (" It looks like a Wan variant this pack does not support (VACE, camera control, "
                "speech-to-video, animate, first-last-frame); use a T2V, I2V or TI2V checkpoint.")
    raise ValueError(
        f"the checkpoint's keys do not match a {config}: missing {len(missing)} "
        f"({summarize_keys(missing, 4)}), unexpected {len(unexpected)} "
        f"({summarize_keys(unexpected, 4)}).{hint or ' The file may be incomplete; download it again.'}")
