"""Quality per step: error vs number of steps for each solver on the closed-form Gaussian problem.

Data x0 ~ N(mu, s^2); the exact velocity is v(x, sigma) = ((sigma - a s^2) / V)(x - a mu) - mu with
a = 1 - sigma, V = a^2 s^2 + sigma^2, and the exact flow from x(1) = eps ends at mu + s eps (derived
in tests/test_flow_solvers.py). The error is max |x_N - (mu + s eps)| over a standardised eps, in
float64; "order" is the slope of log error between successive rows (model calls: Euler, DPM++ and
UniPC call the model once per step, Heun twice but once on the last step).

    python tests/benchmarks/bench_solvers.py [--shift 5] [--mu 0.5] [--s 0.8]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from core.flow.schedules import flow_sigmas  # noqa: E402
from core.flow.solvers import SOLVERS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shift", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--mu", type=float, default=0.5)
    parser.add_argument("--s", type=float, default=0.8)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128, 256])
    args = parser.parse_args()
    mu, s = args.mu, args.s

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = sigma.reshape(-1, 1).to(x.dtype)
        a = 1.0 - sig
        var = a * a * s * s + sig * sig
        return (sig - a * s * s) / var * (x - a * mu) - mu

    eps = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64).reshape(1, -1)
    eps = (eps - eps.mean()) / eps.std(unbiased=False)
    exact = mu + s * eps
    names = list(SOLVERS)
    for shift in args.shift:
        print(f"\nshift {shift:g}, data N({mu:g}, {s:g}^2): max |error| (order vs previous row)")
        print(f"{'steps':>6} " + " ".join(f"{n:>20}" for n in names))
        prev: dict[str, float] = {}
        for steps in args.steps:
            cells = []
            for name in names:
                err = (SOLVERS[name](velocity, eps, flow_sigmas(steps, shift=shift)) - exact).abs().max().item()
                order = f"({math.log2(prev[name] / err):5.2f})" if name in prev and err > 0 else " " * 7
                cells.append(f"{err:12.3e} {order}")
                prev[name] = err
            print(f"{steps:>6} " + " ".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
