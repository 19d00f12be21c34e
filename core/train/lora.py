"""LoRA adapters on the DiT's linear layers: add, train (with `train`), save in ComfyUI's Wan LoRA
key layout, and load back onto a DiT with a strength (merged into the weights, or at run time).

An adapted layer W (out × in) computes  y = W x + b + strength · (alpha / rank) · up(down(x)),
down: in -> rank (Kaiming-uniform), up: rank -> out (zeros, so a fresh adapter changes nothing).
The adapters are child modules of the layer they adapt, so their state-dict keys are the layer's
name plus `.lora_down.weight`, `.lora_up.weight` and `.alpha`; saved with the prefix
`diffusion_model.` this is the "generic" layout ComfyUI's `LoraLoaderModelOnly` reads for Wan
models (comfy/lora.py `model_lora_keys_unet` + comfy/weight_adapter/lora.py):

    diffusion_model.blocks.0.self_attn.q.lora_up.weight    [out, rank]
    diffusion_model.blocks.0.self_attn.q.lora_down.weight  [rank, in]
    diffusion_model.blocks.0.self_attn.q.alpha             []  (scale = alpha / rank)

`load_lora` also reads the other layouts ComfyUI accepts for Wan: `lora_A`/`lora_B`
(diffusers/PEFT), `lora_unet_blocks_0_self_attn_q` names (kohya, Wan-Fun's `lora_unet__`), the
prefixes `model.diffusion_model.`, `transformer.` or none, and full `.diff` / `.diff_b` deltas —
which is how the Wan2.2-Lightning / LightX2V 4-step distill LoRAs store their norm and bias
changes (`diffusion_model.blocks.0.norm3.diff`, `diffusion_model.blocks.0.self_attn.q.diff_b`).
A LoRA none of whose keys match is an error that names some of them (the usual sign of a LoRA
for another model); keys that match nothing while others do are logged and reported as ignored.
"""
from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..dit.scaled_fp8 import ScaledFP8Linear
from .checkpointing import save_tensors

logger = logging.getLogger(__name__)

# The attention (self and cross: q, k, v, o) and FFN projections of every block.
DEFAULT_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                   "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                   "ffn.0", "ffn.2")
COMFY_PREFIX = "diffusion_model."
# Prefixes other trainers put before the module name; most specific first.
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "")
_PAIR_SUFFIXES = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"),
                  (".lora.up.weight", ".lora.down.weight"), ("_lora.up.weight", "_lora.down.weight"),
                  (".lora_B.default.weight", ".lora_A.default.weight"), (".lora_B", ".lora_A"))
LOAD_MODES = ("merge", "runtime")


@dataclass(frozen=True)
class LoRAConfig:
    """Which layers get adapters, and their size."""

    rank: int = 16                            # inner width r of each adapter
    alpha: float | None = None                # scale numerator: output scaled by alpha / rank (None = rank)
    targets: tuple[str, ...] = DEFAULT_TARGETS  # layer names inside each block (`blocks.N.<target>`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"LoRA alpha must be a positive number (or None = rank), got {self.alpha}")
        if not self.targets:
            raise ValueError("LoRA targets must name at least one layer, e.g. 'self_attn.q'")


@dataclass(frozen=True)
class LoRAReport:
    """What `load_lora` did."""

    layers: tuple[str, ...]                   # module names that received a LoRA or a diff
    ignored: tuple[str, ...] = field(default=())  # file keys that match nothing in this model
    rank: int = 0                             # the largest rank found


class StackedLoRA(nn.Module):
    """A further adapter on a layer that already has one (a second LoRA loaded at run time)."""

    def __init__(self, layer: nn.Linear, rank: int, alpha: float, strength: float) -> None:
        super().__init__()
        factory = {"device": layer.weight.device, "dtype": torch.float32}
        self.lora_down = nn.Linear(layer.in_features, rank, bias=False, **factory)
        self.lora_up = nn.Linear(rank, layer.out_features, bias=False, **factory)
        self.register_buffer("alpha", torch.tensor(float(alpha), device=layer.weight.device))
        self.lora_strength = float(strength)
        self.requires_grad_(False)


def _lora_term(adapter: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """strength · (alpha / rank) · up(down(x)), or None at strength 0."""
    strength = adapter.lora_strength
    if strength == 0.0:
        return None
    down, up = adapter.lora_down.weight, adapter.lora_up.weight        # [r, in], [out, r]
    h = F.linear(F.linear(x.to(down.dtype), down), up)                # [..., out]
    return h * (adapter.alpha.to(h.dtype) * (strength / down.shape[0]))  # no host sync


def _lora_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    for adapter in (module, *module.lora_stack):
        term = _lora_term(adapter, inputs[0])
        if term is not None:
            output = output + term.to(output.dtype)
    return output


def _target_layers(dit: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    pattern = re.compile(r"(^|\.)blocks\.\d+\.(" + "|".join(re.escape(t) for t in targets) + r")$")
    layers = {n: m for n, m in dit.named_modules() if pattern.search(n) and isinstance(m, nn.Linear)}
    if not layers:
        raise ValueError(f"no linear layers named blocks.N.{{{', '.join(targets)}}} in "
                         f"{type(dit).__name__}; LoRA targets the DiT's attention and FFN layers")
    return layers


def _attach(layer: nn.Linear, rank: int, alpha: float, strength: float = 1.0) -> nn.Module:
    """A new adapter on `layer` (returned): the primary one (`layer.lora_down`, ...), or, when
    the layer has one already, a StackedLoRA appended to `layer.lora_stack`."""
    if hasattr(layer, "lora_down"):
        extra = StackedLoRA(layer, rank, alpha, strength)
        layer.lora_stack.append(extra)
        return extra
    factory = {"device": layer.weight.device, "dtype": torch.float32}
    layer.lora_down = nn.Linear(layer.in_features, rank, bias=False, **factory)
    layer.lora_up = nn.Linear(rank, layer.out_features, bias=False, **factory)
    layer.register_buffer("alpha", torch.tensor(float(alpha), device=layer.weight.device))
    layer.lora_stack = nn.ModuleList()
    layer.lora_strength = float(strength)
    layer._lora_hook_handle = layer.register_forward_hook(_lora_hook)
    return layer


def add_lora(dit: nn.Module, config: LoRAConfig = LoRAConfig(), *, freeze_base: bool = True,
             generator: torch.Generator | None = None) -> list[nn.Parameter]:
    """Give every target layer of `dit` a fresh adapter (up = 0: the output is unchanged) and,
    with freeze_base, set requires_grad False on everything else. Returns the adapter parameters
    (what `train` will optimise)."""
    if freeze_base:
        for p in dit.parameters():
            p.requires_grad_(False)
    params = []
    alpha = float(config.alpha if config.alpha is not None else config.rank)
    for layer in _target_layers(dit, config.targets).values():
        if hasattr(layer, "lora_down"):
            raise ValueError("the model already has LoRA adapters; call remove_lora(dit) first")
        _attach(layer, config.rank, alpha)
        bound = 1.0 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5)) of nn.Linear
        with torch.no_grad():
            layer.lora_down.weight.uniform_(-bound, bound, generator=generator)
            layer.lora_up.weight.zero_()
        params += [layer.lora_down.weight, layer.lora_up.weight]
    return params


def lora_layers(dit: nn.Module) -> dict[str, nn.Linear]:
    """Module name -> adapted layer, for every layer carrying an adapter."""
    return {n: m for n, m in dit.named_modules()
            if isinstance(m, nn.Linear) and hasattr(m, "lora_down")}


def set_lora_strength(dit: nn.Module, strength: float) -> None:
    """Set the strength of every run-time adapter of `dit`, stacked ones included (0 = off)."""
    for layer in lora_layers(dit).values():
        for adapter in (layer, *layer.lora_stack):
            adapter.lora_strength = float(strength)


def remove_lora(dit: nn.Module) -> None:
    """Detach every run-time adapter (the base weights are untouched)."""
    for layer in lora_layers(dit).values():
        layer._lora_hook_handle.remove()
        for name in ("lora_down", "lora_up", "alpha", "lora_stack", "lora_strength",
                     "_lora_hook_handle"):
            delattr(layer, name)


def lora_state_dict(dit: nn.Module, prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """The adapters as {prefix + layer + '.lora_up.weight' | '.lora_down.weight' | '.alpha'}
    (the primary adapter of each layer: the one `add_lora` made; stacked ones are not saved)."""
    layers = lora_layers(dit)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save; call add_lora first")
    out = {}
    for name, layer in layers.items():
        out[f"{prefix}{name}.lora_up.weight"] = layer.lora_up.weight.detach()
        out[f"{prefix}{name}.lora_down.weight"] = layer.lora_down.weight.detach()
        out[f"{prefix}{name}.alpha"] = layer.alpha.detach().reshape(())
    return out


def save_lora(dit: nn.Module, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
              metadata: dict[str, str] | None = None) -> Path:
    """Write the adapters as a ComfyUI-loadable .safetensors (atomically)."""
    sd = {k: (v.to(dtype) if k.endswith(".weight") else v.float())
          for k, v in lora_state_dict(dit).items()}
    meta = {"format": "flowdit-lora", "layout": "comfyui-wan"}
    meta.update(metadata or {})
    return save_tensors(sd, path, metadata=meta)


@dataclass(frozen=True)
class _Delta:
    up: torch.Tensor | None = None            # [out, r]
    down: torch.Tensor | None = None          # [r, in]
    alpha: float | None = None
    diff: torch.Tensor | None = None          # full delta of the target's weight (or of the parameter)
    diff_b: torch.Tensor | None = None        # bias delta [out]


def _fmt_keys(keys: Sequence[str], limit: int = 4) -> str:
    keys = sorted(keys)
    more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def parse_lora(lora: Mapping[str, torch.Tensor], dit: nn.Module) -> tuple[dict[str, _Delta], list[str]]:
    """Match the keys of a LoRA state dict to `dit`: ({target name: delta}, ignored keys).

    Low-rank pairs (`<layer>.lora_up/lora_down.weight` + `.alpha`, and the other pair spellings)
    target linear layers; `<module>.diff` the weight of any module (norms, linear layers, the patch
    embedding) or a bare parameter (`blocks.N.modulation.diff`), `<module>.diff_b` its bias — the
    keys ComfyUI's LoRA loader applies (comfy/lora.py). Keys it does not apply either (e.g.
    LightX2V's `blocks.N.diff_m`) are returned as ignored. Raises ValueError when nothing
    matches (naming some keys) or shapes disagree.
    """
    modules = dict(dit.named_modules())
    params = dict(dit.named_parameters())
    linear = {n for n, m in modules.items() if isinstance(m, nn.Linear)}
    by_underscore = {n.replace(".", "_"): n for n in modules if n}
    found: dict[str, dict[str, object]] = {}
    used: set[str] = set()

    def resolve(stem: str, ok) -> str | None:
        for prefix in KNOWN_PREFIXES:
            if stem.startswith(prefix) and ok(stem[len(prefix):]):
                return stem[len(prefix):]
        for kohya in ("lora_unet__", "lora_unet_"):
            name = by_underscore.get(stem[len(kohya):]) if stem.startswith(kohya) else None
            if name is not None and ok(name):
                return name
        return None

    def has_weight(name: str) -> bool:
        return name in params or (name in modules and getattr(modules[name], "weight", None) is not None)

    def has_bias(name: str) -> bool:
        return name in modules and getattr(modules[name], "bias", None) is not None

    for key in lora:
        for up_sfx, down_sfx in _PAIR_SUFFIXES:
            if key.endswith(up_sfx) and key[:-len(up_sfx)] + down_sfx in lora:
                stem = key[:-len(up_sfx)]
                name = resolve(stem, linear.__contains__)
                if name is not None:
                    entry = found.setdefault(name, {})
                    entry["up"], entry["down"] = lora[key], lora[stem + down_sfx]
                    used.update({key, stem + down_sfx})
                    if stem + ".alpha" in lora:
                        entry["alpha"] = float(lora[stem + ".alpha"].float().reshape(-1)[0])
                        used.add(stem + ".alpha")
                break
        for sfx, slot, ok in ((".diff", "diff", has_weight), (".diff_b", "diff_b", has_bias)):
            if key.endswith(sfx) and (name := resolve(key[:-len(sfx)], ok)) is not None:
                found.setdefault(name, {})[slot] = lora[key]
                used.add(key)
    if not found:
        raise ValueError(f"0 of the {len(lora)} keys of this LoRA match the model's layers "
                         f"(e.g. {_fmt_keys(lora, 3)}); it was made for another model family or "
                         f"architecture — use a LoRA made for this model")
    deltas = {}
    for name, entry in found.items():
        delta = _Delta(**entry)
        target = params.get(name)
        w = target if target is not None else modules[name].weight
        if delta.up is not None:
            if delta.up.ndim != 2 or delta.down.ndim != 2 or delta.up.shape[1] != delta.down.shape[0] \
                    or (delta.up.shape[0], delta.down.shape[1]) != tuple(w.shape):
                raise ValueError(f"LoRA for {name}: up {list(delta.up.shape)} x down "
                                 f"{list(delta.down.shape)} does not fit the weight "
                                 f"{list(w.shape)}; the LoRA was made for a model of another size")
        for slot, ref in (("diff", w), ("diff_b", getattr(modules.get(name), "bias", None))):
            value = getattr(delta, slot)
            if value is not None and tuple(value.shape) != tuple(ref.shape):
                raise ValueError(f"LoRA {slot} for {name} has shape {list(value.shape)}, the "
                                 f"parameter {list(ref.shape)}; the LoRA was made for a model of "
                                 f"another size")
        deltas[name] = delta
    return deltas, sorted(set(lora) - used)


def load_lora(dit: nn.Module, lora: str | os.PathLike | Mapping[str, torch.Tensor],
              strength: float = 1.0, mode: str = "merge") -> LoRAReport:
    """Apply a LoRA file (or state dict) to `dit` with `strength`.

    mode 'merge': W += strength · (alpha / rank) · up @ down (and diffs), computed in float32 and
    stored in W's dtype, in place (copy the model first to keep the original). An fp8_scaled layer
    (core/dit/scaled_fp8.py) is dequantised, patched and quantised back to fp8 with its own scale
    (grown where the patched values would not fit; unbiased stochastic rounding seeded by the
    layer name): the model keeps its fp8 memory.
    mode 'runtime': attach adapters (base weights untouched; `set_lora_strength` changes the
    strength later, `remove_lora` takes them off); a layer that has an adapter already gets a
    further one stacked on it, so several LoRAs add up. `.diff` / `.diff_b` deltas (norms,
    biases) are applied to new tensors that replace the parameters of this module only, so a
    copy sharing its tensors with another model (nodes/host.py `share_parameters`) leaves that
    model unchanged. Strength 0 changes nothing at all.
    """
    if mode not in LOAD_MODES:
        raise ValueError(f"mode must be one of {LOAD_MODES}, got {mode!r}")
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength}")
    if not isinstance(lora, Mapping):
        from ..checkpoint import read_state_dict

        lora = read_state_dict(lora)
    deltas, ignored = parse_lora(lora, dit)
    if ignored:
        logger.warning("LoRA: %d of %d keys match nothing in this model and were ignored: %s",
                       len(ignored), len(lora), _fmt_keys(ignored))
    modules = dict(dit.named_modules())
    # Names only: holding the parameters here would keep each replaced fp8 weight alive until the
    # end (a second copy of the model at the peak).
    param_names = {name for name, _ in dit.named_parameters()}
    rank = max((d.down.shape[0] for d in deltas.values() if d.down is not None), default=0)
    report = LoRAReport(layers=tuple(sorted(deltas)), ignored=tuple(ignored), rank=rank)
    if strength == 0.0:
        return report
    in_place = mode == "merge"
    with torch.no_grad():
        for name, d in deltas.items():
            if name in param_names and name not in modules:         # a bare parameter: diff only
                owner, _, attr = name.rpartition(".")
                _patch(modules[owner], attr, strength * d.diff.float(), in_place)
                continue
            layer = modules[name]
            pair = d.up is not None and mode == "merge"
            if d.up is not None and mode == "runtime":
                r = d.down.shape[0]
                adapter = _attach(layer, r, d.alpha if d.alpha is not None else float(r), strength)
                adapter.lora_up.weight.copy_(d.up.float())
                adapter.lora_down.weight.copy_(d.down.float())
            if pair or d.diff is not None:
                rows = _weight_delta(d, strength, pair, layer.weight.device)
                if isinstance(layer, ScaledFP8Linear):
                    layer.add_(rows, seed=zlib.crc32(f"{name}.weight".encode()))  # reproducible
                else:
                    _patch(layer, "weight", rows(0, layer.weight.shape[0]), in_place)
            if d.diff_b is not None:
                _patch(layer, "bias", strength * d.diff_b.float(), in_place)
    return report


def _weight_delta(d: _Delta, strength: float, pair: bool, device: torch.device):
    """delta_rows(i, j): the weight delta of output rows i..j-1 in float32,
    strength · ((alpha / r) · up[i:j] @ down + diff[i:j])."""
    if pair:
        r = d.down.shape[0]
        coef = strength * (d.alpha if d.alpha is not None else float(r)) / r
        up, down = d.up.float().to(device), d.down.float().to(device)
    diff = None if d.diff is None else d.diff.float().to(device)

    def rows(i: int, j: int) -> torch.Tensor:
        out = coef * (up[i:j] @ down) if pair else None
        if diff is not None:
            part = strength * diff.reshape(diff.shape[0], -1)[i:j].reshape(-1, *diff.shape[1:])
            out = part if out is None else out + part
        return out

    return rows


def _patch(module: nn.Module, attr: str, delta: torch.Tensor, in_place: bool) -> None:
    """module.<attr> += delta (float32 math, stored in the parameter's dtype). in_place=False puts
    a new tensor in place of the parameter instead of writing into it (tensors shared with other
    models stay as they are)."""
    param = getattr(module, attr)
    value = (param.float() + delta.to(param.device).reshape(param.shape)).to(param.dtype)
    if in_place:
        param.copy_(value)
    else:
        setattr(module, attr, nn.Parameter(value, requires_grad=param.requires_grad))
