"""ComfyUI's "fp8_scaled" checkpoints: linear weights stored in fp8 with a float32 scale each.

A layer's real weight is  W = W_fp8.to(float) * scale  (scale a scalar, or one per output row).
ComfyUI writes two key layouts (facts from comfy/utils.py `convert_old_quants`, comfy/ops.py):

    older   scaled_fp8                          top-level marker tensor (its dtype: the fp8 format;
                                                2 elements: "full-precision matmul only")
            <layer>.weight                      fp8
            <layer>.scale_weight                float32 scale
            <layer>.scale_input                 optional float32 input scale (fp8 matmul only)
    newer   <layer>.weight                      fp8
            <layer>.weight_scale                float32 scale
            <layer>.input_scale                 optional input scale
            <layer>.comfy_quant                 uint8 bytes of JSON {"format": "float8_e4m3fn"}, or
                                                instead the safetensors metadata entry
                                                `_quantization_metadata` = {"layers": {layer: {...}}}

`split_scaled_fp8` normalises either layout to `<layer>.weight` + `<layer>.weight_scale` (+
`<layer>.input_scale`), and `ScaledFP8Linear` keeps the fp8 weight in memory and dequantises it
at use, layer by layer: the weights of a 14B expert stay ~14 GB instead of 28 (bf16).
`save_scaled_fp8` writes such files (either layout) for tests.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .ops import CAST_SLICE_ELEMENTS, FEW_ROWS, CastLinear

OLD_MARKER = "scaled_fp8"
OLD_WEIGHT_SCALE, OLD_INPUT_SCALE = "scale_weight", "scale_input"
WEIGHT_SCALE, INPUT_SCALE = "weight_scale", "input_scale"
QUANT_CONF = "comfy_quant"
QUANT_METADATA = "_quantization_metadata"
LAYOUTS = ("old", "new")
FORMATS: Mapping[str, torch.dtype] = {"float8_e4m3fn": torch.float8_e4m3fn,
                                      "float8_e5m2": torch.float8_e5m2}
FP8_DTYPES = tuple(FORMATS.values())
# Quantising works through slices of at most this many elements: its float32/int32 temporaries
# (about ten per slice) stay at tens of MB, which the allocator keeps for reuse, not hundreds.
QUANT_SLICE_ELEMENTS = 1 << 20
# torch._scaled_mm (fp8 x fp8 tensor-core matmul) needs an Ada/Hopper GPU or newer.
SCALED_MM_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class ScaledFP8Info:
    """What `split_scaled_fp8` found in a file."""

    layers: tuple[str, ...]            # layer names (without `.weight`) stored as scaled fp8
    layout: str                        # 'old' (scale_weight) or 'new' (weight_scale)
    full_precision_mm: bool = False    # the file asks for no fp8 matmul (old 2-element marker)


def is_scaled_fp8(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bool:
    """Whether a (prefix-stripped) state dict is in one of ComfyUI's fp8_scaled layouts."""
    return (OLD_MARKER in sd or bool(metadata and QUANT_METADATA in metadata)
            or any(k.endswith(("." + QUANT_CONF, "." + OLD_WEIGHT_SCALE, "." + WEIGHT_SCALE))
                   for k in sd))


def _layer_formats(sd: dict[str, torch.Tensor], metadata: Mapping[str, str] | None) -> dict[str, str]:
    """{layer: format} from `.comfy_quant` tensors (removed from sd) or the metadata entry."""
    formats = {}
    for key in [k for k in sd if k.endswith("." + QUANT_CONF)]:
        raw = sd.pop(key)
        layer = key[: -len(QUANT_CONF) - 1]
        if raw.is_meta:  # shapes only (`core info`): the weight's dtype names the format
            dtype = getattr(sd.get(f"{layer}.weight"), "dtype", None)
            formats[layer] = {v: k for k, v in FORMATS.items()}.get(dtype, "unknown")
            continue
        try:
            conf = json.loads(bytes(raw.to(torch.uint8).tolist()).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{key} is not readable JSON ({err}); the file is damaged — "
                             f"download it again") from err
        formats[layer] = str(conf.get("format"))
    if metadata and QUANT_METADATA in metadata:
        try:
            layers = json.loads(metadata[QUANT_METADATA])["layers"]
            formats.update({_unprefixed(name, sd): str(conf.get("format"))
                            for name, conf in layers.items()})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"the file's '{QUANT_METADATA}' metadata is not readable ({err}); "
                             f"the file is damaged — download it again") from err
    return formats


def _unprefixed(name: str, sd: Mapping[str, torch.Tensor]) -> str:
    """A metadata layer name as the (prefix-stripped) keys spell it."""
    from ..checkpoint import KNOWN_PREFIXES

    for prefix in ("",) + KNOWN_PREFIXES:
        if name.startswith(prefix) and f"{name[len(prefix):]}.weight" in sd:
            return name[len(prefix):]
    return name


def split_scaled_fp8(sd: dict[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                     ) -> tuple[dict[str, torch.Tensor], ScaledFP8Info]:
    """Normalise an fp8_scaled state dict (either layout, keys already without their repackaging
    prefix) to `<layer>.weight` (fp8) + `<layer>.weight_scale` (float32, shape [] or [out, 1]) +
    optional `<layer>.input_scale`. Raises a clear ValueError for a layer whose scale is missing,
    a format this pack does not run (nvfp4, ...), or scales of the wrong size.
    """
    sd = dict(sd)
    marker = sd.pop(OLD_MARKER, None)
    full_precision_mm = marker is not None and marker.numel() == 2
    formats = _layer_formats(sd, metadata)
    old = marker is not None or any(k.endswith("." + OLD_WEIGHT_SCALE) for k in sd)
    if old:  # the older names -> the newer ones; an input scale of exactly 1 means "none"
        fmt = {torch.float8_e5m2: "float8_e5m2"}.get(getattr(marker, "dtype", None), "float8_e4m3fn")
        for key in [k for k in sd if k.endswith(("." + OLD_WEIGHT_SCALE, "." + OLD_INPUT_SCALE))]:
            layer, kind = key.rsplit(".", 1)
            value = sd.pop(key)
            if kind == OLD_WEIGHT_SCALE:
                sd[f"{layer}.{WEIGHT_SCALE}"] = value
                formats.setdefault(layer, fmt)
            elif not (value.numel() == 1 and value.device.type != "meta" and float(value) == 1.0):
                sd[f"{layer}.{INPUT_SCALE}"] = value
    for key in [k for k in sd if k.endswith("." + WEIGHT_SCALE)]:
        formats.setdefault(key[: -len(WEIGHT_SCALE) - 1], "float8_e4m3fn")
    unsupported = sorted({f for f in formats.values() if f not in FORMATS})
    if unsupported or any(k.endswith(".weight_scale_2") for k in sd):
        raise ValueError(f"this checkpoint is quantised as {unsupported or ['nvfp4']}, which this "
                         f"pack does not run; use an fp8_scaled (float8_e4m3fn / float8_e5m2), "
                         f"fp8, bf16 or fp16 file of the model")
    missing = sorted(name for name in formats if f"{name}.{WEIGHT_SCALE}" not in sd)
    unscaled = sorted(k[:-7] for k, v in sd.items() if k.endswith(".weight") and v.dtype in FP8_DTYPES
                      and k[:-7] not in formats)
    if missing or unscaled:
        names = (missing or unscaled)[:3]
        raise ValueError(f"this fp8_scaled checkpoint has no scale for {len(missing or unscaled)} "
                         f"fp8 layer(s), e.g. {', '.join(names)} (expected "
                         f"'{names[0]}.{OLD_WEIGHT_SCALE if old else WEIGHT_SCALE}'); the file "
                         f"is incomplete or damaged — download it again")
    for name, fmt in formats.items():
        weight_key = f"{name}.weight"
        if weight_key not in sd:
            raise ValueError(f"this fp8_scaled checkpoint has a scale for {name} but no "
                             f"'{weight_key}'; the file is incomplete — download it again")
        weight = sd[weight_key]
        if weight.dtype != FORMATS[fmt] or weight.ndim != 2:
            raise ValueError(f"{weight_key} is {weight.dtype} {list(weight.shape)}, but the file "
                             f"says it is a {fmt} matrix; the file is damaged — download it again")
        for kind in (WEIGHT_SCALE, INPUT_SCALE):
            if f"{name}.{kind}" in sd:
                sd[f"{name}.{kind}"] = _scale_shape(sd[f"{name}.{kind}"], weight.shape[0],
                                                    f"{name}.{kind}", per_row=kind == WEIGHT_SCALE)
    info = ScaledFP8Info(layers=tuple(sorted(formats)), layout="old" if old else "new",
                         full_precision_mm=full_precision_mm)
    return sd, info


def _scale_shape(scale: torch.Tensor, rows: int, key: str, per_row: bool) -> torch.Tensor:
    """A scale as float32 [] (per tensor) or [rows, 1] (per output row), or a clear error."""
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        return scale.reshape(())
    if per_row and scale.numel() == rows:
        return scale.reshape(rows, 1)
    raise ValueError(f"{key} has shape {list(scale.shape)}; expected one scale or one per output "
                     f"row ({rows}); the file is damaged — download it again")


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W_fp8.to(dtype) * scale: the real weight in `dtype`."""
    return weight.to(dtype) * scale.to(device=weight.device, dtype=dtype)


def quantize(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn,
             scale: torch.Tensor | None = None, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_fp8, scale) with W ≈ W_fp8 * scale; scale = max|W| / fp8 max unless given (then values
    beyond the fp8 range are clamped). With a generator, rounding is stochastic and unbiased (each
    value goes to one of its two fp8 neighbours with the probabilities that keep its mean: a
    change smaller than one fp8 step survives on average), else to nearest. Works through slices
    of rows, so the float32 temporaries stay small next to the weight."""
    fmax = torch.finfo(dtype).max
    if scale is None:
        scale = (weight.abs().amax().float() / fmax).clamp_min(torch.finfo(torch.float32).tiny)
    scale = scale.to(device=weight.device, dtype=torch.float32)
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    step = max(1, QUANT_SLICE_ELEMENTS // max(1, weight[0].numel())) if weight.ndim else 1
    rows = weight.reshape(1) if weight.ndim == 0 else weight
    flat = out.reshape(1) if weight.ndim == 0 else out
    for i in range(0, rows.shape[0], step):
        s = scale if scale.ndim == 0 else scale[i:i + step]
        x = (rows[i:i + step].float() / s).clamp_(-fmax, fmax)
        flat[i:i + step] = x.to(dtype) if generator is None else _round_stochastic(x, dtype, generator)
    return out, scale


# (mantissa bits, exponent of the smallest normal) of each fp8 format.
_FP8_BITS = {torch.float8_e4m3fn: (3, -6), torch.float8_e5m2: (2, -14)}


def _round_stochastic(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """x (float32, within the fp8 range) -> fp8, rounded up or down to its fp8 neighbours with
    probabilities that keep the mean. On the float32 bit pattern: add random bits below the last
    mantissa bit fp8 keeps at x's exponent, then cut them off (in sign-magnitude form this is
    unbiased stochastic rounding; a carry moves into the next binade as it should). Magnitudes
    below the smallest fp8 subnormal go to 0 or to it with probability |x| / subnormal."""
    mant, min_exp = _FP8_BITS[dtype]
    bits = x.view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) - 127
    drop = (min_exp - exponent).clamp_(min=0) + (23 - mant)           # float32 bits to cut
    tiny = drop > 23
    drop.clamp_(max=23)
    noise = torch.randint(0, 1 << 23, x.shape, generator=generator, dtype=torch.int32).to(x.device)
    mask = (torch.ones_like(drop) << drop) - 1
    y = ((bits + (noise & mask)) & ~mask).view(torch.float32)
    subnormal = 2.0 ** (min_exp - mant)
    up = noise.to(torch.float32) * 2.0 ** -23 < x.abs() / subnormal
    y = torch.where(tiny, torch.where(up, subnormal, 0.0).to(x.dtype).copysign(x), y)
    fmax = torch.finfo(dtype).max
    return y.clamp_(-fmax, fmax).to(dtype)


class ScaledFP8Linear(CastLinear):
    """A linear layer whose weight stays fp8 and is dequantised at use: y = x (W_fp8 · s)ᵀ + b.

    Buffers: `weight_scale` (float32, [] or [out, 1]) and, when the file has one, `input_scale`.
    With `use_scaled_mm` set (see `set_fp8_matmul`) and an fp8-capable GPU, the matmul runs as
    torch._scaled_mm on the fp8 weight and an fp8 copy of the input instead.

    `convert_weight` / `set_weight` are the hooks ComfyUI's ModelPatcher calls around a LoRA
    patch (comfy/model_patcher.py `get_key_weight`): it upcasts the stored weight, asks
    `convert_weight` for the real values, adds the patches, and hands the result to `set_weight`,
    which quantises it back to fp8 with this layer's scale (stochastic rounding, as ComfyUI's own
    fp8 layers do), so a patched 14B model still needs fp8 memory; unpatching restores the weight.
    """

    use_scaled_mm = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, input_scale: bool = False, per_row: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        shape = (out_features, 1) if per_row else ()
        self.register_buffer(WEIGHT_SCALE, torch.ones(shape, device=device, dtype=torch.float32))
        self.register_buffer(INPUT_SCALE, torch.ones((), device=device, dtype=torch.float32)
                             if input_scale else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_scaled_mm and _scaled_mm_ok(self, x):
            return self._scaled_mm(x)
        w, scale, b = self.weight, self.weight_scale, self.bias
        if x.numel() > FEW_ROWS * x.shape[-1] or w.numel() <= CAST_SLICE_ELEMENTS:
            weight = dequantize(w.to(x.device), scale, x.dtype)
            return F.linear(x, weight, None if b is None else b.to(x))
        # A handful of rows (timestep MLPs): dequantise slices of output rows, never all at once.
        step = max(1, CAST_SLICE_ELEMENTS // w.shape[1])
        parts = []
        for i in range(0, w.shape[0], step):
            s = scale if scale.ndim == 0 else scale[i:i + step]
            parts.append(F.linear(x, dequantize(w[i:i + step].to(x.device), s, x.dtype),
                                  None if b is None else b[i:i + step].to(x)))
        return torch.cat(parts, dim=-1)

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        fmax = torch.finfo(self.weight.dtype).max
        rows = x.reshape(-1, x.shape[-1])                                # [M, in]
        in_scale = (self.input_scale if self.input_scale is not None
                    else torch.ones((), device=x.device)).to(x.device, torch.float32)
        xq = (rows / in_scale.to(rows.dtype)).clamp(-fmax, fmax).to(self.weight.dtype)
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=in_scale,
                               scale_b=self.weight_scale.to(x.device), out_dtype=x.dtype,
                               bias=None if self.bias is None else self.bias.to(x))
        return out.reshape(*x.shape[:-1], self.out_features)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The real weight [out, in] in `dtype` (a new tensor)."""
        return dequantize(self.weight, self.weight_scale, dtype)

    def add_(self, delta_rows, seed: int | None = None) -> None:
        """W <- W + delta, stored as fp8 again (a new tensor; stochastic rounding seeded by `seed`).
        delta_rows(i, j): the float32 delta of output rows i..j-1, so the work runs over slices of
        rows and the float32 temporaries stay small. The scale stays unless the new values would
        not fit the fp8 range under it; then it grows to max|W| / fp8 max (per row for per-row
        scales), so nothing is clipped."""
        fmax = torch.finfo(self.weight.dtype).max
        rows = max(1, QUANT_SLICE_ELEMENTS // self.in_features)
        scale = self.weight_scale.to(torch.float32)

        def new_rows(i: int) -> torch.Tensor:
            s = scale if scale.ndim == 0 else scale[i:i + rows]
            return dequantize(self.weight[i:i + rows], s, torch.float32) + delta_rows(i, i + rows)

        amax = torch.cat([new_rows(i).abs().amax(dim=1) for i in range(0, self.out_features, rows)])
        new_scale = torch.maximum(scale, (amax.amax() if scale.ndim == 0 else amax[:, None]) / fmax)
        gen = _generator(seed, self.weight.device)
        q = torch.empty_like(self.weight)
        for i in range(0, self.out_features, rows):
            s = new_scale if new_scale.ndim == 0 else new_scale[i:i + rows]
            q[i:i + rows], _ = quantize(new_rows(i), self.weight.dtype, s, gen)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight_scale = new_scale

    # -- ComfyUI ModelPatcher hooks (see the class docstring)
    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs) -> torch.Tensor:
        scale = self.weight_scale.to(device=weight.device, dtype=weight.dtype)
        return weight.mul_(scale) if inplace else weight * scale

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed: int | None = None,
                   return_weight: bool = False, **kwargs) -> torch.Tensor | None:
        # The scale must stay: ComfyUI restores only `weight` when it unpatches. Values beyond
        # the fp8 range under it are clipped, as ComfyUI's own scaled-fp8 layers did.
        q, _ = quantize(weight, self.weight.dtype, self.weight_scale.to(weight.device),
                        _generator(seed, weight.device))
        if return_weight:
            return q
        if inplace_update:
            self.weight.data.copy_(q)
        else:
            self.weight = nn.Parameter(q.to(self.weight.device), requires_grad=False)
        return None


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator for stochastic rounding (on the CPU, so results do not depend on the device)."""
    return None if seed is None else torch.Generator().manual_seed(int(seed) % (1 << 63))


def _scaled_mm_ok(layer: ScaledFP8Linear, x: torch.Tensor) -> bool:
    """torch._scaled_mm runs here: CUDA capability >= 8.9, e4m3 weight, per-tensor scale, all
    matrix sizes multiples of 16, a bf16/fp16 input (its fp32 output takes no bias)."""
    if not (x.is_cuda and layer.weight.is_cuda and hasattr(torch, "_scaled_mm")):
        return False
    if torch.cuda.get_device_capability(x.device) < SCALED_MM_MIN_CAPABILITY:
        return False
    return (layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.ndim == 0
            and layer.in_features % 16 == 0 and layer.out_features % 16 == 0
            and (x.numel() // layer.in_features) % 16 == 0
            and x.dtype in (torch.bfloat16, torch.float16))


def set_fp8_matmul(model: nn.Module, enabled: bool) -> int:
    """Turn torch._scaled_mm on or off for every ScaledFP8Linear of `model` (used only where the
    GPU supports it); returns how many layers can use it."""
    count = 0
    for module in model.modules():
        if isinstance(module, ScaledFP8Linear):
            module.use_scaled_mm = bool(enabled)
            count += 1
    return count


def install_scaled_layers(model: nn.Module, sd: Mapping[str, torch.Tensor],
                          layers: tuple[str, ...]) -> None:
    """Replace each named nn.Linear of `model` (built on the meta device) by a ScaledFP8Linear
    shaped for the scales in `sd`, so that `load_state_dict(sd, assign=True)` fits."""
    for name in layers:
        try:
            old = model.get_submodule(name)
        except AttributeError:
            continue  # not a layer of this model: the key check reports it
        if not isinstance(old, nn.Linear):
            raise ValueError(f"{name} is stored as scaled fp8 but is not a linear layer here; the "
                             f"file is not a Wan DiT of this kind")
        scale = sd.get(f"{name}.{WEIGHT_SCALE}")
        new = ScaledFP8Linear(old.in_features, old.out_features, bias=old.bias is not None,
                              device="meta", input_scale=f"{name}.{INPUT_SCALE}" in sd,
                              per_row=scale is not None and scale.ndim == 2)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


def save_scaled_fp8(sd: Mapping[str, torch.Tensor], path: str | os.PathLike, layout: str = "new",
                    *, prefix: str = "", metadata: Mapping[str, str] | None = None,
                    layers: list[str] | None = None, fp8_dtype: torch.dtype = torch.float8_e4m3fn,
                    per_row: bool = False, input_scale: bool = False,
                    quant_in_metadata: bool = False, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a state dict as one of ComfyUI's fp8_scaled files (for tests: tiny models under the
    real template file names). Returns the path.

    layout 'old': `scaled_fp8` marker + `<layer>.scale_weight` (+ `.scale_input`); 'new':
    `<layer>.weight_scale` (+ `.input_scale`) and `<layer>.comfy_quant` (or, with
    quant_in_metadata, the `_quantization_metadata` header entry). layers: the layer names to
    quantise (default: every 2-D `.weight` under `blocks.`, as ComfyUI's Wan files do); other
    tensors are stored in `dtype`. prefix: put before every key (e.g. 'model.diffusion_model.').
    metadata: extra safetensors metadata (e.g. `core.dit.config.dit_metadata(config)`).
    """
    from ..train.checkpointing import save_tensors

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if fp8_dtype not in FP8_DTYPES:
        raise ValueError(f"fp8_dtype must be one of {FP8_DTYPES}, got {fp8_dtype}")
    fmt = {v: k for k, v in FORMATS.items()}[fp8_dtype]
    if layers is None:
        layers = [k[:-7] for k, v in sd.items()
                  if k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2]
    out: dict[str, torch.Tensor] = {}
    quantised = set(layers)
    for key, value in sd.items():
        if key.endswith(".weight") and key[:-7] in quantised:
            continue
        out[prefix + key] = value.to(dtype) if value.is_floating_point() else value
    w_name, i_name = (OLD_WEIGHT_SCALE, OLD_INPUT_SCALE) if layout == "old" else (WEIGHT_SCALE, INPUT_SCALE)
    conf = {"format": fmt}
    for name in layers:
        w = sd[f"{name}.weight"].float()
        if per_row:
            scale = (w.abs().amax(dim=1) / torch.finfo(fp8_dtype).max).clamp_min(1e-12)  # [out]
            q = (w / scale[:, None]).clamp(-torch.finfo(fp8_dtype).max,
                                           torch.finfo(fp8_dtype).max).to(fp8_dtype)
        else:
            q, scale = quantize(w, fp8_dtype)
        out[f"{prefix}{name}.weight"] = q
        out[f"{prefix}{name}.{w_name}"] = scale.float()
        if input_scale:
            out[f"{prefix}{name}.{i_name}"] = torch.tensor(1.0)
        if layout == "new" and not quant_in_metadata:
            out[f"{prefix}{name}.{QUANT_CONF}"] = torch.tensor(list(json.dumps(conf).encode()),
                                                               dtype=torch.uint8)
    meta = dict(metadata or {})
    if layout == "old":
        out[prefix + OLD_MARKER] = torch.empty(0, dtype=fp8_dtype)
    elif quant_in_metadata:
        meta[QUANT_METADATA] = json.dumps({"format_version": "1.0",
                                           "layers": {prefix + n: conf for n in layers}})
    return save_tensors(out, path, metadata=meta or None)
