"""Benchmark of Ulysses sequence parallelism on CPU processes (gloo), and the paper estimate of
how it scales on GPUs.

Not a test. Run from the repository root:

    python tests/benchmarks/bench_sequence_parallel.py                       # 1.3B-shaped, 2 layers, ~8k tokens
    python tests/benchmarks/bench_sequence_parallel.py --grid 4,30,52 --repeats 3

Two processes are spawned (one torch thread each). In every round, rank 0 first times the
ordinary one-process forward while rank 1 waits, then both time the sharded forward; rounds
alternate which of the two goes first (ABBA), so machine noise hits both alike. Printed: min /
median / max of each, the paired speed-up, the bytes each rank sends through the all-to-alls per
forward, and the model FLOPs per forward (communication / computation ratio). Then the same two
numbers for a real model on GPUs, from stated assumptions (NVLink bandwidth, achieved TFLOP/s).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `core`

from core.dit import WanDiT, get_preset  # noqa: E402
from core.parallel import ParallelDiT, init_mesh  # noqa: E402
from bench_dit import model_flops  # noqa: E402  (same folder)

# Assumptions of the GPU estimate: an H100/H200 SXM node, NVLink 4 (450 GB/s each way per GPU,
# of which an all-to-all reaches roughly 70%), bf16 at ~60% of the 989 TFLOP/s dense peak.
NVLINK_GBPS = 450.0 * 0.7
GPU_TFLOPS = 989.0 * 0.6


def alltoall_bytes(cfg, tokens: int, ranks: int, batch: int, itemsize: int) -> float:
    """Bytes one rank sends per forward: q, k, v in and the attention output back, per block,
    each (N-1)/N of a [B, L/N, D] tensor (the slice for itself stays local)."""
    per_block = 4 * batch * (tokens / ranks) * cfg.dim * itemsize * (ranks - 1) / ranks
    return per_block * cfg.num_layers


def _worker(rank, port, args, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    mesh = init_mesh(2, False, timeout_s=3600)
    cfg = get_preset(args.preset, num_layers=args.layers)
    torch.manual_seed(0)
    model = WanDiT(cfg).eval()
    f, h, w = args.grid
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, f, 2 * h, 2 * w, generator=g)
    ctx = torch.randn(1, args.text_len, cfg.text_dim, generator=g)
    t = torch.tensor([500.0])
    sharded = ParallelDiT(model, mesh)
    single_times, sharded_times = [], []

    def time_single():
        dist.barrier()
        if rank == 0:
            start = time.perf_counter()
            reference = model(x, t, ctx)
            single_times.append(time.perf_counter() - start)
            return reference
        return None

    def time_sharded():
        dist.barrier()
        start = time.perf_counter()
        got = sharded(x, t, ctx)
        sharded_times.append(time.perf_counter() - start)
        return got

    with torch.no_grad():
        ref, got = time_single(), time_sharded()                     # warm-up, and the check
        if rank == 0:
            print(f"max |sharded - single| = {float((ref - got).abs().max()):.2e}", flush=True)
        single_times.clear(), sharded_times.clear()
        for r in range(args.repeats):
            order = (time_single, time_sharded) if r % 2 == 0 else (time_sharded, time_single)
            for fn in order:
                fn()
    if rank == 0:
        torch.save({"single": single_times, "sharded": sharded_times}, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--grid", default="8,32,32", help="token grid F,H,W (8x32x32 = 8192 tokens: "
                                                      "e.g. 29 frames at 512x512 for Wan2.1)")
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()
    args.grid = tuple(int(v) for v in args.grid.split(","))
    cfg = get_preset(args.preset, num_layers=args.layers)
    tokens = args.grid[0] * args.grid[1] * args.grid[2]
    print(f"{args.preset}, {args.layers} layers, {tokens} tokens, fp32, 1 thread per process")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_sp_{os.getpid()}.pt"
    mp.start_processes(_worker, args=(port, args, out), nprocs=2, start_method="spawn")
    res = torch.load(out, weights_only=True)
    out.unlink()
    for name in ("single", "sharded"):
        v = res[name]
        print(f"  {name:8s} forward: min {min(v):.2f} s, median {statistics.median(v):.2f} s, "
              f"max {max(v):.2f} s ({len(v)} runs)")
    ratios = [a / b for a, b in zip(res["single"], res["sharded"])]
    print(f"  speed-up with 2 ranks (paired, median): {statistics.median(ratios):.2f}x")

    flops = model_flops(cfg, tokens, args.text_len, 0)
    sent = alltoall_bytes(cfg, tokens, 2, 1, 4)
    print(f"  per forward: {flops / 1e12:.2f} TFLOP of model math; each rank sends "
          f"{sent / 1e6:.1f} MB through the all-to-alls ({sent / flops * 1e3:.3f} bytes per kFLOP)")

    print("\nEstimate on GPUs (assumptions: NVLink all-to-all at "
          f"{NVLINK_GBPS:.0f} GB/s per GPU, bf16 at {GPU_TFLOPS:.0f} TFLOP/s achieved):")
    big = get_preset("wan2.1-t2v-14b")
    big_tokens = 21 * 45 * 80                                  # 1280x720x81: 21 latent frames
    for ranks in (1, 2, 4, 8):
        compute = model_flops(big, big_tokens, 512, 0) / ranks / (GPU_TFLOPS * 1e12)
        comm = alltoall_bytes(big, big_tokens, ranks, 1, 2) / (NVLINK_GBPS * 1e9)
        print(f"  Wan 14B, 1280x720x81 ({big_tokens} tokens), {ranks} GPU(s): compute "
              f"{compute:.2f} s + all-to-all {comm:.3f} s per forward "
              f"({comm / compute:.1%} of compute); 40 steps x 2 CFG passes ~ "
              f"{80 * (compute + comm) / 60:.1f} min")


if __name__ == "__main__":
    main()
