"""The default model's generation settings, importable without torch (the command line checks its
arguments against them before it imports torch). `bundle` re-exports them.

The model card's tables (core/default_model/MODEL_CARD.md) are measured at these settings.
"""
from __future__ import annotations

WIDTH, HEIGHT, FRAMES = 64, 64, 17   # trained size: 64x64 pixels, 17 frames (4n + 1)
FPS = 16.0                           # frame rate of the written video (the training clips' rate)
DEFAULT_STEPS = 20                   # solver steps
DEFAULT_SHIFT = 2.0                  # schedule shift (1 = none)
DEFAULT_CFG = 5.0                    # classifier-free guidance scale (1 = off), used only while
                                     # sigma > DEFAULT_CFG_UNTIL
DEFAULT_CFG_UNTIL = 0.7              # guidance only while sigma > this, then cfg 1 (a guidance
                                     # interval). Model card: chosen on held-out prompts at seeds 2
                                     # and 3; steadier objects and crisper edges than cfg 3 throughout
DEFAULT_SOLVER = "unipc"

# The names of core.flow.solvers.SOLVERS (tests/test_cli_generate.py keeps the two equal).
SOLVER_NAMES = ("dpmpp_2m", "euler", "heun", "unipc")

# Steps vs quality (model card, T2V, 84 held-out cases): with the default guidance interval, 10
# and 20 steps draw the prompted shape in 96-99% of the clips, 4 steps only in 68-81% (few steps
# fall above sigma 0.7); at 4 steps cfg 3 on every step (--cfg 3 --cfg-until 0) keeps it at
# 97.6-98.8%, with softer edges. Below this many steps the command line says so.
MIN_STEADY_STEPS = 10
