"""FlowDiT core: a self-contained PyTorch implementation of Wan-family video DiTs, the causal 3D
VAE, flow-matching schedules and solvers, and training. Never imports ComfyUI.

The public entry points are re-exported lazily so that `import core` stays cheap.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "load_dit": ("core.dit.loader", "load_dit"),
    "load_vae": ("core.vae.loader", "load_vae"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        # Relative to this package, whatever name the pack was imported under.
        mod = importlib.import_module("." + module.split(".", 1)[1], __name__)
        return getattr(mod, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
