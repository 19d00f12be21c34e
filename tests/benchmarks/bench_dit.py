"""Benchmark of one DiT forward: time, tokens/s, achieved TFLOP/s and peak memory, optionally next to
ComfyUI's own WanModel on the same weights and input (a ratio measured in one run).

Not a test (pytest collects test_*.py only). Run from the repository root, e.g.:

    python tests/benchmarks/bench_dit.py --preset wan2.1-t2v-1.3b --layers 2 \
        --width 416 --height 240 --frames 9 --dtype fp32
    COMFYUI_PATH=/path/to/ComfyUI python tests/benchmarks/bench_dit.py ... --comfy

Memory: on CUDA the peak allocated by torch during the forward; on the CPU the peak resident set
during the forward (Linux VmHWM, reset before each run) minus the resident set before it, with
glibc's mmap threshold fixed so that freed tensors leave the resident set (the script re-executes
itself with MALLOC_MMAP_THRESHOLD_ set).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `core`

from core.dit import available_attention_backends, get_preset, load_dit  # noqa: E402
from core.dit.loader import parse_dtype  # noqa: E402
from core.dit.random_weights import random_state_dict  # noqa: E402

# Pixel -> latent strides of the VAEs (frames, height, width): Wan2.1 VAE for 16-channel models,
# Wan2.2 VAE for the 48-channel TI2V model. Latent frames = (frames - 1) / 4 + 1.
VAE_STRIDES = {16: (4, 8, 8), 48: (4, 16, 16)}
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
# Dense bf16 peak of an H100 SXM, for the fraction-of-peak line on that GPU.
H100_BF16_PEAK_TFLOPS = 989.0


def model_flops(cfg, tokens: int, text_len: int, image_len: int) -> float:
    """Multiply-adds × 2 of one forward (the linear layers and attention matmuls of the blocks)."""
    d, f = cfg.dim, cfg.ffn_dim
    per_block = (2 * 4 * tokens * d * d                 # self-attention q, k, v, o
                 + 2 * 2 * tokens * tokens * d          # self-attention scores and weighted sum
                 + 2 * 2 * tokens * d * d               # cross-attention q, o
                 + 2 * 2 * text_len * d * d             # cross-attention k, v on the text
                 + 2 * 2 * tokens * text_len * d        # cross-attention matmuls
                 + 2 * 2 * tokens * d * f)              # FFN
    if cfg.has_image_branch:
        per_block += 2 * 2 * image_len * d * d + 2 * 2 * tokens * image_len * d
    return float(per_block * cfg.num_layers)


class PeakMemory:
    """Peak memory of a region: CUDA allocator peak, or Linux resident-set high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")      # resets VmHWM to the current RSS
            self.base = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _proc_status("VmHWM")

    def describe(self) -> str:
        kind = "allocated" if self.device.type == "cuda" else "RSS"
        return (f"peak {kind} {self.peak / 2**20:8.1f} MiB "
                f"(+{(self.peak - self.base) / 2**20:.1f} MiB over the {self.base / 2**20:.1f} before)")


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class Timing:
    """Wall and process-CPU seconds of each timed call, and the memory of the last one.
    CPU seconds are less disturbed than wall time by other processes sharing the cores."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.mem: PeakMemory | None = None

    def measure(self, fn, device: torch.device) -> None:
        with PeakMemory(device) as mem:
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.walls.append(time.perf_counter() - start)
            self.cpus.append(time.process_time() - cpu_start)
        self.mem = mem

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


def time_interleaved(runners: dict, device: torch.device, repeat: int) -> dict[str, Timing]:
    """One warm-up call each, then `repeat` rounds calling each runner in turn (so a burst of
    load from other processes hits all of them alike)."""
    timings = {name: Timing() for name in runners}
    with torch.no_grad():
        for fn in runners.values():
            fn()
        for _ in range(repeat):
            for name, fn in runners.items():
                timings[name].measure(fn, device)
    return timings


def comfy_model(cfg, sd, device, dtype, attention: str):
    """ComfyUI's WanModel with the same weights (needs COMFYUI_PATH and ComfyUI's dependencies)."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        raise SystemExit("--comfy needs COMFYUI_PATH set to a ComfyUI checkout")
    sys.path.append(path)
    cli_args = importlib.import_module("comfy.cli_args")
    cli_args.args.cpu = device.type == "cpu"
    # 'pytorch': the same SDPA kernel as ours; 'default': whatever ComfyUI picks by itself.
    cli_args.args.use_pytorch_cross_attention = attention == "pytorch"
    importlib.import_module("comfy.model_management")
    ops = importlib.import_module("comfy.ops")
    wan = importlib.import_module("comfy.ldm.wan.model")
    model = wan.WanModel(model_type="i2v" if cfg.has_image_branch else "t2v",
                         patch_size=cfg.patch_size, in_dim=cfg.in_dim, out_dim=cfg.out_dim,
                         dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim,
                         text_dim=cfg.text_dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                         qk_norm=cfg.qk_norm, cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps,
                         device=device, dtype=dtype, operations=ops.disable_weight_init)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--layers", type=int, default=None, help="override the number of blocks")
    p.add_argument("--width", type=int, default=832, help="pixel width")
    p.add_argument("--height", type=int, default=480, help="pixel height")
    p.add_argument("--frames", type=int, default=81, help="pixel frames (4n+1)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=512, help="text context tokens")
    p.add_argument("--dtype", default="bf16", help="compute dtype: fp32, bf16, fp16")
    p.add_argument("--weight-dtype", default=None, help="weight storage, e.g. fp8_e4m3fn")
    p.add_argument("--attention", default="sdpa", help=f"ours: {available_attention_backends()}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--per-token-t", action="store_true", help="TI2V-style per-token timesteps")
    p.add_argument("--comfy", action="store_true", help="also time ComfyUI's WanModel")
    p.add_argument("--comfy-attention", choices=["pytorch", "default"], default="pytorch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cpu" and MMAP_ENV not in os.environ and argv is None:
        # glibc keeps freed heap pages resident, so the resident set would not fall after the
        # warm-up call and a later peak would say nothing. With a fixed mmap threshold, every large
        # tensor is its own mapping, returned on free: the resident set then follows live memory.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "65536"})
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = get_preset(args.preset, **({"num_layers": args.layers} if args.layers else {}))
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    st, sh, sw = VAE_STRIDES.get(cfg.out_dim, VAE_STRIDES[16])
    latent = ((args.frames - 1) // st + 1, args.height // sh, args.width // sw)
    tokens = latent[0] * (latent[1] // cfg.patch_size[1]) * (latent[2] // cfg.patch_size[2])
    image_len = 257 if cfg.has_image_branch else 0
    flops = model_flops(cfg, tokens, args.text_len, image_len) * args.batch

    sd = random_state_dict(cfg, seed=0, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, cfg.in_dim, *latent, generator=gen, device=device)
    context = torch.randn(args.batch, args.text_len, cfg.text_dim, generator=gen, device=device)
    clip = (torch.randn(args.batch, image_len, cfg.image_dim, generator=gen, device=device)
            if image_len else None)
    t = torch.full((args.batch,), 700.0, device=device)
    if args.per_token_t:
        t = t[:, None].repeat(1, tokens)
        t[:, : tokens // latent[0]] = 0.0                   # the first latent frame is clean

    print(f"{cfg} | {args.width}x{args.height}x{args.frames} px -> latent {latent}, {tokens} tokens, "
          f"batch {args.batch}, text {args.text_len} | {args.dtype} on {device}, "
          f"{torch.get_num_threads()} threads | {flops / 1e12:.3f} TFLOP per forward")

    ours = load_dit(dict(sd), device=device, dtype=dtype, attention=args.attention,
                    weight_dtype=args.weight_dtype, num_heads=cfg.num_heads)
    runners = {"ours": lambda: ours(x, t, context, clip)}
    if args.comfy:
        theirs = comfy_model(cfg, sd, device, dtype, args.comfy_attention)
        xc, cc = x.to(dtype), context.to(dtype)     # ComfyUI's model_base casts inputs like this
        clipc = clip.to(dtype) if clip is not None else None
        runners[f"comfyui({args.comfy_attention})"] = lambda: theirs(xc, t, cc, clip_fea=clipc)
    timings = time_interleaved(runners, device, args.repeat)
    for name, timing in timings.items():
        report(name, timing, tokens * args.batch, flops, device, dtype)
    if args.comfy:
        a, b = timings.values()
        print(f"ratio ours/comfyui: wall time {a.wall / b.wall:.3f}, CPU time {a.cpu / b.cpu:.3f}, "
              f"forward memory {(a.mem.peak - a.mem.base) / max(1, b.mem.peak - b.mem.base):.3f}")


def report(name: str, timing: Timing, tokens: int, flops: float, device: torch.device,
           dtype: torch.dtype) -> None:
    sec = timing.wall
    tflops = flops / sec / 1e12
    line = (f"{name:>18}: {sec * 1e3:9.1f} ms/forward (CPU {timing.cpu * 1e3:.0f} ms), "
            f"{tokens / sec:8.0f} tokens/s, {tflops:8.3f} TFLOP/s, {timing.mem.describe()}")
    if device.type == "cuda" and "H100" in torch.cuda.get_device_name(device) and dtype == torch.bfloat16:
        line += f", {100 * tflops / H100_BF16_PEAK_TFLOPS:.1f}% of H100 bf16 peak"
    print(line)


if __name__ == "__main__":
    main()
