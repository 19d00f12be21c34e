"""Where PyTorch's CPU conv3d heuristic is slow: `slow_conv3d` (im2col + GEMM, what F.conv3d picks
for a batch-1 input with N*C*T*H <= 20480 or a 1x1 spatial kernel on one thread) against the oneDNN
kernel (`aten::mkldnn_convolution`, what it picks otherwise), per layer shape and thread count.

    python tests/benchmarks/bench_conv_path.py [--threads 1,2] [--repeat 5]

For each shape the two kernels run interleaved ABBA (A B B A, repeated), after a check that they
agree; the table prints the median time of each, min/max, and the median of the paired ratios
oneDNN / default (< 1: oneDNN faster). Only shapes where the default heuristic does NOT already
take oneDNN are listed (elsewhere both are the same kernel). The profiler confirms which kernel
each path runs. This is the measurement behind `core/vae/layers.py`'s ONEDNN_MAX_CHANNELS.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.vae.layers import onednn_conv3d  # noqa: E402

KERNELS = {"3x3x3": ((3, 3, 3), (0, 1, 1)), "3x1x1": ((3, 1, 1), (0, 0, 0)),
           "1x1x1": ((1, 1, 1), (0, 0, 0))}


def kernel_names(fn) -> list[str]:
    """The convolution kernels the profiler sees in one call of fn."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sorted({e.key for e in prof.key_averages()
                   if e.key in ("aten::slow_conv3d_forward", "aten::mkldnn_convolution")})


def abba(a, b, repeat: int) -> tuple[list[float], list[float]]:
    """Times of a and b in `repeat` rounds of A B B A (each round gives two samples each)."""
    ta, tb = [], []

    def t(fn, out):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)

    a(), b()  # warm-up (oneDNN builds its primitive on the first call)
    for _ in range(repeat):
        t(a, ta), t(b, tb), t(b, tb), t(a, ta)
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--channels", default="8,16,32,64,128,256,384,512")
    ap.add_argument("--sizes", default="8,16,32,64,128", help="square H=W of the conv input")
    ap.add_argument("--frames", default="3,6", help="T of the input incl. the 2 causal past frames")
    ap.add_argument("--kernels", default="3x3x3,3x1x1,1x1x1")
    ap.add_argument("--repeat", type=int, default=5, help="ABBA rounds (2 samples each)")
    ap.add_argument("--max-seconds", type=float, default=0.5, help="skip shapes slower than this")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, oneDNN {torch.backends.mkldnn.is_available()}")
    print(f"{'thr':>3} {'kernel':>6} {'C':>4} {'H':>4} {'T':>2}  {'default ms':>22}  "
          f"{'oneDNN ms':>22}  ratio(med)  kernels")
    with torch.no_grad():
        for threads in [int(v) for v in args.threads.split(",")]:
            torch.set_num_threads(threads)
            for kname in args.kernels.split(","):
                k, pad = KERNELS[kname]
                for c in [int(v) for v in args.channels.split(",")]:
                    w = torch.randn(c, c, *k) / (c * k[0] * k[1] * k[2]) ** 0.5
                    bias = torch.randn(c)
                    for h in [int(v) for v in args.sizes.split(",")]:
                        for t in [int(v) for v in args.frames.split(",")]:
                            x = torch.randn(1, c, t, h, h)
                            a = lambda: F.conv3d(x, w, bias, padding=pad)  # noqa: E731
                            b = lambda: onednn_conv3d(x, w, bias, (1, 1, 1), pad)  # noqa: E731
                            names = kernel_names(a)
                            if names != ["aten::slow_conv3d_forward"]:
                                continue  # the heuristic already takes oneDNN here
                            start = time.perf_counter()
                            diff = (a() - b()).abs().max().item()
                            if time.perf_counter() - start > args.max_seconds:
                                continue
                            assert diff < 1e-4, (c, h, t, diff)
                            ta, tb = abba(a, b, args.repeat)
                            ratio = statistics.median(y / x_ for x_, y in zip(ta, tb))
                            fmt = lambda v: (f"{1e3 * statistics.median(v):7.2f} "  # noqa: E731
                                             f"[{1e3 * min(v):6.2f},{1e3 * max(v):6.2f}]")
                            print(f"{threads:>3} {kname:>6} {c:>4} {h:>4} {t:>2}  {fmt(ta)}  "
                                  f"{fmt(tb)}  {ratio:9.2f}   {'+'.join(n[6:] for n in names)}"
                                  f" vs {'+'.join(n[6:] for n in kernel_names(b))}", flush=True)


if __name__ == "__main__":
    main()
