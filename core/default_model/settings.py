"""The default model's generation settings, importable without torch (the command line checks its
arguments against them before it imports torch). `bundle` re-exports them.

The model card's tables (core/default_model/MODEL_CARD.md) are measured at these settings.
"""
from __future__ import annotations

WIDTH, HEIGHT, FRAMES = 64, 64, 17   # trained size: 64x64 pixels, 17 frames (4n + 1)
FPS = 16.0                           # frame rate of the written video (the training clips' rate)
DEFAULT_STEPS = 20                   # solver steps
DEFAULT_SHIFT = 2.0                  # schedule shift (1 = none)
DEFAULT_CFG = 4.0                    # classifier-free guidance scale (1 = off)
DEFAULT_SOLVER = "unipc"

# The names of core.flow.solvers.SOLVERS (tests/test_cli_generate.py keeps the two equal).
SOLVER_NAMES = ("dpmpp_2m", "euler", "heun", "unipc")

# Steps vs adherence (model card, T2V, 42 held-out prompts): at 4 steps 38% (unipc) to 81% (heun)
# of the clips show the prompted colour and direction, at 10 steps 88-95%, at 20 steps 93%.
# Below this many steps the command line warns that the clip may not be recognisable.
MIN_RECOGNISABLE_STEPS = 10
