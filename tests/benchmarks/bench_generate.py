"""Where the main job's time goes: the default model's 64x64, 17-frame T2V clip on the CPU.

    python tests/benchmarks/bench_generate.py [--threads 1] [--repeat 5] [--fresh 1]

In-process, model loaded once, through the public API (`core.generate.generate` with
`GenerateOptions`, then `core.video_io.write_video`), timed by wrapping the pieces from outside:
text encoding (`text.encode`), every DiT forward (forward hooks; the forwards of one solver step
share its timestep), sampling as a whole (first DiT forward to the start of the VAE decode: solver
and guidance arithmetic included), the VAE decode (`vae.decode_raw`) and the file writing. It
prints the split of every run, then medians, and the ratio VAE decode / sampling.

The VAE runs alternately with its CPU fast paths (as shipped) and with the reference ops it used
before (tests/benchmarks/vae_paths.py), in ABBA order, after checking that both give the same
frames; so the decode's before/after ratio is a paired median measured in the same run.
`--fresh N` also times N fresh `python -m core generate` processes (import and load included).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
PROMPT = "a yellow square moving up on a gray background"


class SplitTimer:
    """Times the pieces of one `generate` call by wrapping the model's parts (nothing edited)."""

    def __init__(self, model) -> None:
        self.model = model
        self.reset()
        for obj, name, kind in ((model.text, "encode", "text"), (model.vae, "decode_raw", "decode"),
                                (model.vae, "encode_raw", "image encode")):
            setattr(obj, name, self._wrap(getattr(obj, name), kind))
        model.dit.register_forward_pre_hook(self._dit_start, with_kwargs=True)
        model.dit.register_forward_hook(self._dit_end)

    def reset(self) -> None:
        self.pieces: dict[str, float] = {}
        self.forwards: list[tuple[float, float, float]] = []   # (timestep, start, end)
        self.decode_start: float | None = None

    def _wrap(self, fn, kind):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            if kind == "decode":
                self.decode_start = start
            out = fn(*args, **kwargs)
            self.pieces[kind] = self.pieces.get(kind, 0.0) + time.perf_counter() - start
            return out
        return timed

    def _dit_start(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["t"]
        self._pending = (float(t.max()), time.perf_counter())

    def _dit_end(self, module, args, output):
        t, start = self._pending
        self.forwards.append((t, start, time.perf_counter()))

    def steps(self) -> list[tuple[int, float]]:
        """(DiT forwards, seconds in them) per solver step (consecutive forwards, same t)."""
        out: list[tuple[int, float]] = []
        last = None
        for t, start, end in self.forwards:
            if t != last:
                out.append((0, 0.0))
                last = t
            n, sec = out[-1]
            out[-1] = (n + 1, sec + end - start)
        return out

    def sampling(self) -> float:
        return self.decode_start - self.forwards[0][1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="ABBA rounds (fast, ref, ref, fast)")
    parser.add_argument("--fresh", type=int, default=1, help="fresh-process runs to time")
    args = parser.parse_args()
    import torch

    from core.default_model import bundle
    from core.generate import GenerateOptions, generate
    from core.video_io import write_video
    from vae_paths import paths

    if not bundle.is_shipped():
        print(f"skipped: {bundle.missing_message()}")
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = bundle.load_default_model()
    load = time.perf_counter() - t0
    timer = SplitTimer(model)
    options = GenerateOptions(PROMPT)
    print(f"default model, {options.width}x{options.height}, {options.frames} frames, "
          f"{options.steps} steps {options.solver}, cfg {options.cfg}; {args.threads} thread(s); "
          f"load {load:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        def run(fast: bool, i: int) -> dict:
            timer.reset()
            with paths(model.vae.model, fast):
                start = time.perf_counter()
                frames = generate(options, model)
                total = time.perf_counter() - start
            w0 = time.perf_counter()
            write_video(frames, Path(tmp) / f"clip{i}.mp4")
            steps = timer.steps()
            return dict(frames=frames, total=total, write=time.perf_counter() - w0,
                        text=timer.pieces.get("text", 0.0), decode=timer.pieces["decode"],
                        sampling=timer.sampling(), steps=steps)

        a, b = run(True, 0), run(False, 1)  # warm-up, and the equality check
        diff = int((a["frames"].astype(int) - b["frames"].astype(int)).__abs__().max())
        print(f"max |frame difference| fast vs reference VAE paths: {diff} (uint8 levels)")
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for r in range(args.repeat):
            for fast in (True, False, False, True):
                runs[fast].append(run(fast, 2 + r))
        for fast in (True, False):
            name = "VAE fast paths (shipped)" if fast else "VAE reference ops (before)"
            print(f"\n{name}: per run, seconds")
            print("   text  sampling (DiT forwards per step: first..last)  decode  write  total")
            for x in runs[fast]:
                dit = [sec for _, sec in x["steps"]]
                print(f"  {x['text']:.3f}  {x['sampling']:.3f} ({len(dit)} steps x "
                      f"{x['steps'][0][0]} fwd: {dit[0]:.3f} .. {dit[-1]:.3f}, median "
                      f"{statistics.median(dit):.3f})  {x['decode']:.3f}  {x['write']:.3f}  "
                      f"{x['total'] + x['write']:.3f}")
        fast, ref = runs[True], runs[False]
        med = lambda xs: statistics.median(xs)  # noqa: E731
        print("\nmedians over runs (s):")
        for key in ("text", "sampling", "decode", "write"):
            print(f"  {key:<9} fast {med([x[key] for x in fast]):.3f}   "
                  f"reference {med([x[key] for x in ref]):.3f}")
        per_step = [sec for x in fast for _, sec in x["steps"]]
        print(f"  one step's DiT forwards: median {med(per_step):.4f} s "
              f"(min {min(per_step):.4f}, max {max(per_step):.4f})")
        print(f"\nVAE decode / sampling (median of per-run ratios): fast "
              f"{med([x['decode'] / x['sampling'] for x in fast]):.2f}, reference "
              f"{med([x['decode'] / x['sampling'] for x in ref]):.2f}")
        # Pair run k of each kind: the k-th fast and k-th reference run sit in the same ABBA round.
        ratios = [r['decode'] / f['decode'] for f, r in zip(fast, ref)]
        print(f"VAE decode reference / fast (paired, median [min, max]): {med(ratios):.2f} "
              f"[{min(ratios):.2f}, {max(ratios):.2f}]")

    if args.fresh:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.fresh):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "core", "generate", "--prompt", PROMPT,
                                "--out", str(Path(tmp) / f"c{i}.mp4"), "--threads",
                                str(args.threads)], cwd=ROOT, env=env, check=True,
                               stdout=subprocess.DEVNULL)
                print(f"python -m core generate (fresh process, {args.threads} thread(s)): "
                      f"{time.perf_counter() - t0:.2f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
