"""Reading checkpoint files safely: `.safetensors`, or `.pth`/`.pt`/`.ckpt` through
`torch.load(weights_only=True)` only (a pickle that would run code is refused, never executed).

This module knows files and key prefixes; each model family (core/dit, core/vae) knows its own key
layout and detects its configuration from the state dict it gets from here.
"""
from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

StateDict = dict[str, torch.Tensor]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")

# Prefixes that repackaged files put in front of the official key names, most specific first.
# ComfyUI's repackaged diffusion models use `model.diffusion_model.`; some trainers save `module.`.
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.")

# Container keys under which some trainers nest the real state dict in a .pth file.
NESTED_KEYS = ("state_dict", "model", "module", "ema", "model_ema")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def read_state_dict(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                    device: str | torch.device = "cpu") -> StateDict:
    """Return a flat {key: tensor} dict from a file or an existing mapping.

    `device="meta"` reads only the header of a safetensors file (shapes and dtypes, no data),
    which is enough to detect a configuration without touching gigabytes of weights.
    Raises ValueError for anything that is not a readable checkpoint, naming the file and the fix.
    """
    if isinstance(path_or_state_dict, Mapping):
        sd = dict(path_or_state_dict)
        _check_tensors(sd, "the given state dict")
        return sd
    path = Path(path_or_state_dict)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        sd = _read_safetensors(path, torch.device(device))
    elif suffix in PICKLE_SUFFIXES:
        sd = _read_pickle(path, torch.device(device))
    else:
        raise ValueError(
            f"{path.name}: unsupported checkpoint format {suffix!r}; use a .safetensors file "
            f"(or a .pth/.pt file, which is read with weights_only=True)")
    if not sd:
        raise ValueError(f"{path.name}: the file holds no tensors; is it a model checkpoint?")
    return sd


def _read_safetensors(path: Path, device: torch.device) -> StateDict:
    header, data_start = _safetensors_header(path)
    out = {}
    if device.type == "meta":
        for key, entry in header.items():
            out[key] = torch.empty(entry["shape"], dtype=entry["dtype"], device="meta")
        return out
    # Each tensor is read straight from the file into its own buffer (no memory map, no second
    # copy): loading needs the file's size in memory, not twice that.
    try:
        with open(path, "rb") as f:
            for key, entry in header.items():
                begin, end = entry["offsets"]
                t = torch.empty(entry["shape"], dtype=entry["dtype"])
                view = t.view(-1).view(torch.uint8) if t.numel() else t.view(torch.uint8)
                f.seek(data_start + begin)
                if f.readinto(memoryview(view.numpy())) != end - begin:
                    raise ValueError(f"tensor {key!r} is cut short")
                out[key] = t if device.type == "cpu" else t.to(device)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path.name}: not a readable safetensors file ({err}); the download may be "
            f"truncated or the file is of another kind — download it again") from err
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (`__metadata__`); {} for other files."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    return dict(_safetensors_header(path, metadata=True))


# A header larger than this is not a checkpoint's (real 14B files have ~100 kB headers).
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _safetensors_header(path: Path, metadata: bool = False) -> tuple[dict, int] | dict[str, str]:
    """({key: {dtype, shape, offsets}}, start of the data) of a safetensors file, checked against
    the file's size; or, with metadata=True, its `__metadata__` strings."""
    bad = f"{path.name}: not a readable safetensors file"
    fix = "the download may be truncated or the file is of another kind — download it again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(_MAX_HEADER_BYTES, size - 8):
                raise ValueError("no valid header")
            raw = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{bad} ({err}); {fix}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{bad} (the header is not a table); {fix}")
    meta = raw.pop("__metadata__", None) or {}
    if metadata:
        return {str(k): str(v) for k, v in meta.items()}
    out = {}
    for key, entry in raw.items():
        try:
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{bad}: tensor {key!r} has an unsupported or damaged entry "
                             f"({err}); {fix}") from err
        if end - begin != math.prod(shape) * dtype.itemsize or end > size - 8 - n or begin < 0:
            raise ValueError(f"{bad}: tensor {key!r} does not fit in the file; {fix}")
        out[key] = {"dtype": dtype, "shape": shape, "offsets": (begin, end)}
    return out, 8 + n


def _read_pickle(path: Path, device: torch.device) -> StateDict:
    map_location = "cpu" if device.type == "meta" else device
    try:
        try:
            obj = torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Legacy (non-zip) torch files cannot be memory-mapped; read them plainly.
            obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path.name}: refused to load — the file contains Python objects that could run "
            f"code, and only plain tensors are accepted (weights_only=True). Convert it to "
            f".safetensors with a tool you trust, or use the official weights.") from err
    # The weights-only unpickler meets garbage bytes with whatever error the opcode hit first.
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError) as err:
        raise ValueError(
            f"{path.name}: not a readable PyTorch checkpoint ({err}); the file may be truncated "
            f"— download it again") from err
    sd = _unnest(obj, path.name)
    if device.type == "meta":
        sd = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in sd.items()}
    return sd


def _unnest(obj: object, name: str) -> StateDict:
    """Find the flat tensor dict inside a loaded .pth object."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
            if nested is not None:
                obj = nested
                continue
        break
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ValueError(f"{name}: the file holds no state dict of tensors; is it a model checkpoint?")


def _check_tensors(sd: Mapping, what: str) -> None:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"{what}: values must be tensors, but {bad[:3]} are not")


# Elements checked at once by `find_non_finite` (64 MiB of float32): bounds the temporary copy
# that fp8 and half-precision tensors need for the check.
FINITE_CHECK_ELEMENTS = 1 << 24


def find_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None.

    A damaged download with NaN weights would otherwise load "fine" and produce black or empty
    videos. fp8 tensors (no isfinite kernel) are checked through float16, in slices.
    """
    for name, value in tensors.items():
        if not value.is_floating_point() or value.is_meta:
            continue
        flat = value.detach().reshape(-1)
        for start in range(0, flat.numel(), FINITE_CHECK_ELEMENTS):
            part = flat[start:start + FINITE_CHECK_ELEMENTS]
            if part.element_size() == 1:
                part = part.to(torch.float16)
            if not bool(torch.isfinite(part).all()):
                return name
    return None


def strip_prefix(sd: StateDict, marker_key: str | None = None) -> StateDict:
    """Remove a repackaging prefix (`model.diffusion_model.`, `model.`, ...) from the keys.

    A prefix is removed when every key carries it, or, for whole-pipeline files that bundle several
    models, when `marker_key` (an unprefixed key the caller's model must have) is found under it;
    then only the keys under that prefix are kept.
    """
    for prefix in KNOWN_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    if marker_key is not None and marker_key not in sd:
        for prefix in KNOWN_PREFIXES:
            if prefix + marker_key in sd:
                return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def summarize_keys(keys, limit: int = 6) -> str:
    """A short, readable sample of key names for error messages (never a dump of hundreds)."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{shown}{more}" if keys else "(none)"


def describe_checkpoint(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor]) -> str:
    """A few lines saying which model family a checkpoint belongs to, its configuration, which
    released model it can be, and how its weights are stored. Reads only the header."""
    from .dit.config import describe_variant
    from .dit.loader import read_dit_state_dict
    from .vae.config import detect_config as detect_vae
    from .vae.latent_format import format_from_metadata

    fmt = None
    if not isinstance(path_or_state_dict, Mapping):
        fmt = format_from_metadata(read_metadata(path_or_state_dict),
                                   os.path.basename(os.fspath(path_or_state_dict)))
    named = ("" if fmt is None else f"\nLatent format: {fmt.name}, named in the file"
             + (" (with its own preview colours)" if fmt.rgb_factors is not None else ""))
    try:
        sd, config, scaled = read_dit_state_dict(path_or_state_dict, device="meta")
    except ValueError as dit_err:
        sd = read_state_dict(path_or_state_dict, device="meta")
        try:
            return f"VAE: {detect_vae(sd)}{named}"
        except ValueError as vae_err:
            raise ValueError(f"unrecognised checkpoint — not a DiT: {dit_err}; "
                             f"not a VAE: {vae_err}") from None
    storage = sd["blocks.0.ffn.0.weight"].dtype
    weights = (f"fp8_scaled ({len(scaled)} layers fp8 with per-layer scales, dequantised at use)"
               if scaled else f"stored in {str(storage).removeprefix('torch.')}")
    return f"DiT: {config}\nModel: {describe_variant(config)}\nWeights: {weights}{named}"


def describe_state_dict(sd: StateDict) -> str:
    """`describe_checkpoint` for a state dict in memory."""
    return describe_checkpoint(sd)
