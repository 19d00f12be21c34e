"""Benchmark of the default-model build's DiT stage: seconds per training step in 1 process
against 2 DDP processes (gloo, one thread each), on random latents of the recipe's shape.

Not a test (pytest collects test_*.py only). Run from the repository root:

    python tests/benchmarks/bench_build_dit.py [--steps 12] [--rounds 2] [--toy]

Each run trains `--steps` steps of the recipe's DiT (BuildConfig: width, batch, optimiser) from
scratch in fresh processes; a step's time is the gap between two step callbacks on rank 0, and a
run's figure is the median over its steps after the first three (warm-up). Runs go in rounds of
1 2 2 1 processes (each round reverses the order) so the machine's drifting load does not favour
one side; printed: every run's median, then the paired ratio of the medians. The speed-up to
expect on an idle 2-core machine is just under 2x (each step all-reduces ~13 MB of gradients).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rank_main(work: Path, steps: int, toy: bool) -> None:
    """One rank: train `steps` steps and (rank 0) write the step times."""
    import torch

    sys.path.insert(0, str(ROOT))
    from core.default_model.build import TOY, BuildConfig
    from core.default_model.train_dit import LatentCaptions, ShapesModel, shapes_loss
    from core.train import TrainConfig, train

    torch.set_num_threads(1)
    cfg = TOY if toy else BuildConfig()
    g = torch.Generator().manual_seed(0)
    n = 4 * cfg.dit_batch
    latents = torch.randn(n, cfg.dit.in_dim, 5, 8, 8, generator=g)
    torch.manual_seed(cfg.seed)
    model = ShapesModel(cfg.dit, cfg.text)
    tokens = model.text.tokenizer.encode(["a red circle moving left on a black background"] * n)
    config = TrainConfig(steps=steps, batch_size=cfg.dit_batch, lr=cfg.dit_lr, warmup_steps=2,
                         lr_schedule="cosine", weight_decay=0.01, grad_clip=1.0,
                         ema_decay=cfg.dit_ema, checkpoint_every=10 ** 9, log_every=10 ** 9,
                         seed=cfg.seed, mixed_precision="no", device="cpu",
                         output_dir=str(work / "run"), progress=False)
    stamps = []
    train(model, shapes_loss, LatentCaptions(latents, tokens), config,
          callback=lambda step, loss, info: stamps.append(time.perf_counter()))
    if int(os.environ.get("RANK", "0")) == 0:
        (work / "stamps.json").write_text(json.dumps(stamps))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, steps: int, toy: bool) -> float:
    """Median seconds per step (after 3 warm-up steps) of one fresh run."""
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        work = Path(tmp)
        port = _free_port()
        procs = []
        for rank in range(processes):
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if processes > 1:
                env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                           LOCAL_RANK=str(rank), WORLD_SIZE=str(processes))
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--rank-of", str(work), "--steps", str(steps)]
                + (["--toy"] if toy else []), env=env, cwd=ROOT))
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError(f"a {processes}-process run failed")
        stamps = json.loads((work / "stamps.json").read_text())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][3:]
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 1 2 2 1 processes")
    parser.add_argument("--toy", action="store_true", help="the toy recipe (a quick check)")
    parser.add_argument("--rank-of", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_of is not None:
        _rank_main(args.rank_of, args.steps, args.toy)
        return
    if args.steps < 6:
        parser.error("--steps must be at least 6 (3 warm-up steps, then 2 gaps or more)")
    (ROOT / "runs").mkdir(exist_ok=True)
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for processes in (1, 2, 2, 1):
            seconds = run(processes, args.steps, args.toy)
            times[processes].append(seconds)
            print(f"{processes} process(es): {seconds:.3f} s/step", flush=True)
    ratios = [a / b for a, b in zip(times[1], times[2])]
    print(f"median s/step: 1 process {statistics.median(times[1]):.3f}, "
          f"2 processes {statistics.median(times[2]):.3f}; paired speed-up "
          f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]")


if __name__ == "__main__":
    main()
