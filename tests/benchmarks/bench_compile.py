"""torch.compile (regional: each DiT block) against eager, measured in the same run.

    python tests/benchmarks/bench_compile.py [--repeats 3] [--threads 2] [--backend inductor]
        [--skip-main] [--skip-dit] [--width 832 --height 480 --frames 9] [--device cpu|cuda]
        [--dtype fp32|bf16]

Two jobs, each run eager and compiled, interleaved (eager, compiled, eager, ...) so that a busy
machine slows both alike; prints min and median of the repeats and the ratio compiled / eager
(< 1: compiled is faster), and the compile time separately (first compiled call minus the
median of the later ones):

1. the main job: `core.generate` with the pack's default model (64x64, 17 frames, unipc 20 steps,
   cfg 4 batched: 20 DiT forwards of batch 2, 80 tokens each), text encoding and VAE decode
   included;
2. a Wan2.1-1.3B-shaped DiT cut to 2 layers (random weights) at 832x480x9 frames: 4680 tokens
   (the "~4k tokens" job), one forward, text context of 512 tokens; tokens/s as well.

Inductor keeps compiled code in an on-disk cache, so a second run of this script compiles much
faster; run it with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 for the cold compile time a user meets once.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a yellow square moving up on a gray background"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def report(name: str, eager: list[float], compiled: list[float], first: float, extra: str = "") -> None:
    e_min, e_med = min(eager), statistics.median(eager)
    c_min, c_med = min(compiled), statistics.median(compiled)
    print(f"{name}: eager min {e_min:.3f} s, median {e_med:.3f} s | compiled min {c_min:.3f} s, "
          f"median {c_med:.3f} s | ratio compiled/eager min {c_min / e_min:.2f}, median "
          f"{c_med / e_med:.2f} | compile time {first - c_med:.1f} s (first compiled call "
          f"{first:.1f} s){extra}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--skip-main", action="store_true")
    parser.add_argument("--skip-dit", action="store_true")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from core.default_model import bundle
    from core.dit.compile import compile_blocks
    from core.dit.config import get_preset
    from core.dit.model import WanDiT
    from core.dit.random_weights import random_state_dict
    from core.generate import GenerateOptions, generate

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, backend {args.backend}, "
          f"{args.repeats} repeats", flush=True)

    if not args.skip_main and bundle.is_shipped():
        eager_model = bundle.load_default_model()
        compiled_model = bundle.load_default_model()
        compile_blocks(compiled_model.dit, backend=args.backend)
        options = GenerateOptions(PROMPT)
        reference = generate(options, eager_model)  # warm-up (allocator, thread pool)
        t0 = time.perf_counter()
        frames = generate(options, compiled_model)
        first = time.perf_counter() - t0
        diff = int((reference.astype(int) - frames.astype(int)).__abs__().max())
        eager, compiled = [], []
        for _ in range(args.repeats):
            eager.append(timed(lambda: generate(options, eager_model)))
            compiled.append(timed(lambda: generate(options, compiled_model)))
        report("main job (default model, unipc 20 steps, cfg 4)", eager, compiled, first,
               f" | max pixel difference {diff}/255")

    if not args.skip_dit:
        device = torch.device(args.device)
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        config = get_preset("wan2.1-t2v-1.3b", num_layers=2)
        dit = WanDiT(config, compute_dtype=dtype, device=device)
        dit.load_state_dict(random_state_dict(config, seed=0, dtype=torch.float32, device=device))
        dit.eval().requires_grad_(False)
        shared = {id(t): t for t in list(dit.parameters()) + list(dit.buffers())}
        compiled_dit = compile_blocks(copy.deepcopy(dit, shared), backend=args.backend)
        f = (args.frames - 1) // 4 + 1
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, f, args.height // 8, args.width // 8, generator=g).to(device)
        ctx = torch.randn(1, 512, 4096, generator=g).to(device)
        t = torch.tensor([500.0], device=device)
        tokens = f * (args.height // 16) * (args.width // 16)

        def run(model):
            def go():
                with torch.no_grad():
                    model(x, t, ctx)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            return go

        run(dit)()
        first = timed(run(compiled_dit))
        eager, compiled = [], []
        for _ in range(args.repeats):
            eager.append(timed(run(dit)))
            compiled.append(timed(run(compiled_dit)))
        with torch.no_grad():
            err = (dit(x, t, ctx) - compiled_dit(x, t, ctx)).abs().max().item()
        report(f"Wan2.1-1.3B-shaped DiT, 2 layers, {args.width}x{args.height}x{args.frames} "
               f"({tokens} tokens), {args.dtype}", eager, compiled, first,
               f" | tokens/s eager {tokens / statistics.median(eager):.0f}, compiled "
               f"{tokens / statistics.median(compiled):.0f} | max |difference| {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
