"""Time the main job: the default model's 64x64, 17-frame T2V clip on the CPU, load included.

    python tests/benchmarks/bench_generate.py [--threads 2] [--repeat 3]

Prints the wall time of a fresh `python -m core generate` process (what a user waits for: import,
load, text encoding, sampling, VAE decode, MP4 write) and, in-process, the load and generate
times separately. The bar (issue 6) is under 10 s wall on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a yellow square moving up on a gray background"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from core.default_model import bundle
    from core.generate import GenerateOptions, generate

    if not bundle.is_shipped():
        print(f"skipped: {bundle.missing_message()}")
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            out = Path(tmp) / f"clip{i}.mp4"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "core", "generate", "--prompt", PROMPT, "--out",
                            str(out), "--threads", str(args.threads)], cwd=ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL)
            print(f"python -m core generate (fresh process, {args.threads} threads): "
                  f"{time.perf_counter() - t0:.2f} s wall")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = bundle.load_default_model()
    t1 = time.perf_counter()
    for _ in range(args.repeat):
        t2 = time.perf_counter()
        generate(GenerateOptions(PROMPT), model)
        t3 = time.perf_counter()
        print(f"in-process: load {t1 - t0:.2f} s, generate {t3 - t2:.2f} s "
              f"({bundle.DEFAULT_SOLVER}, {bundle.DEFAULT_STEPS} steps, cfg {bundle.DEFAULT_CFG})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
