"""VAE benchmark (a script, not a test): encode/decode time and peak memory against frame count
and resolution, tiled and untiled, float32/bfloat16, and against ComfyUI's own Wan VAE on the same
random weights when COMFYUI_PATH is set.

    python tests/benchmarks/bench_vae.py --preset wan2.1 --size 64 --latent-frames 5,21
    COMFYUI_PATH=/tmp/ComfyUI /tmp/comfy-venv/bin/python tests/benchmarks/bench_vae.py --comfy

Peak memory: on CUDA torch.cuda.max_memory_allocated; on the CPU the peak resident set during the
call minus the resident set before it (the kernel's VmHWM, reset through /proc/self/clear_refs),
with glibc made to return every freed allocation above 64 KiB at once (MALLOC_MMAP_THRESHOLD_; the
script re-executes itself with it set). "work" is the peak minus the output tensor.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # see the docstring
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.vae import TileSpec, preset  # noqa: E402
from core.vae.loader import build_vae  # noqa: E402
from core.vae.model import random_state_dict  # noqa: E402

MiB = 2 ** 20


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(fn, device: torch.device):
    """(seconds, peak bytes above the level before the call, result) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _rss("VmHWM:") - before
    return time.perf_counter() - t0, peak, out


def comfy_vae(name: str, cfg, sd, device, dtype):
    """ComfyUI's WanVAE of the same widths holding the same weights."""
    path = os.environ["COMFYUI_PATH"]
    sys.path.append(path)
    import importlib

    cli_args = importlib.import_module("comfy.cli_args")
    cli_args.args.cpu = device.type == "cpu"
    cli_args.args.use_pytorch_cross_attention = True
    importlib.import_module("comfy.model_management")
    module = importlib.import_module("comfy.ldm.wan.vae" if cfg.version == "2.1"
                                     else "comfy.ldm.wan.vae2_2")
    kwargs = dict(dim=cfg.dim, z_dim=cfg.z_dim, temperal_downsample=list(cfg.temporal_downsample))
    if cfg.version == "2.2":
        kwargs["dec_dim"] = cfg.dec_dim
    model = module.WanVAE(**kwargs).eval()
    model.load_state_dict(sd, strict=True)
    return model.to(device=device, dtype=dtype)


def row(label, seconds, peak, out_bytes):
    print(f"{label:<46} {seconds:8.2f} s  peak {peak / MiB:8.1f} MiB  "
          f"work {(peak - out_bytes) / MiB:8.1f} MiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.1")
    ap.add_argument("--size", default="64", help="comma-separated square pixel sizes")
    ap.add_argument("--latent-frames", default="5,21", help="comma-separated latent frame counts")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--tile", type=int, default=0, help="also run tiled with this latent tile")
    ap.add_argument("--comfy", action="store_true", help="compare with ComfyUI (COMFYUI_PATH)")
    ap.add_argument("--encode", action="store_true", help="also time encode")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = preset(args.preset)
    sd = random_state_dict(cfg, seed=0)
    s = cfg.spatial_stride
    print(f"{cfg}; device {device}, {torch.get_num_threads()} threads")
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        ours = build_vae(cfg, sd, device, dtype)
        theirs = comfy_vae(args.preset, cfg, sd, device, dtype) if args.comfy else None
        for size in [int(v) for v in args.size.split(",")]:
            # Warm up both sides at this size (one chunk each way): first calls allocate
            # lasting backend buffers (oneDNN primitives and scratchpads) that are not the
            # working set of a decode and would otherwise be charged to whoever runs first.
            z1 = torch.randn(1, cfg.z_dim, 2, size // s, size // s).to(device)
            ours.encode_raw(ours.decode_raw(z1))
            if theirs is not None:
                with torch.no_grad():
                    theirs.encode(theirs.decode(z1.to(dtype)))
            works = {}
            for f in [int(v) for v in args.latent_frames.split(",")]:
                g = torch.Generator().manual_seed(f)
                z = torch.randn(1, cfg.z_dim, f, size // s, size // s, generator=g).to(device)
                tag = f"{str(dtype)[6:]} {size}px F={f} (T={ours.pixel_frames(f)})"
                if args.encode:
                    video = torch.rand(1, 3, ours.pixel_frames(f), size, size).to(device) * 2 - 1
                    sec, peak, lat = measure(lambda: ours.encode_raw(video), device)
                    row(f"ours encode {tag}", sec, peak, lat.numel() * lat.element_size())
                    if theirs is not None:
                        with torch.no_grad():
                            sec2, peak2, lat2 = measure(lambda: theirs.encode(video.to(dtype)), device)
                        row(f"comfy encode {tag}", sec2, peak2, lat2.numel() * lat2.element_size())
                        print(f"    ratio ours/comfy: time {sec / sec2:.2f}, peak {peak / peak2:.2f}")
                sec, peak, out = measure(lambda: ours.decode_raw(z), device)
                out_bytes = out.numel() * out.element_size()
                works[f] = peak - out_bytes
                row(f"ours decode {tag}", sec, peak, out_bytes)
                if args.tile:
                    spec = TileSpec(args.tile, max(1, args.tile // 4))
                    sec_t, peak_t, out_t = measure(lambda: ours.decode_raw(z, tiling=spec), device)
                    row(f"ours decode tiled {args.tile} {tag}", sec_t, peak_t,
                        out_t.numel() * out_t.element_size())
                    del out_t
                if theirs is not None:
                    with torch.no_grad():
                        sec2, peak2, out2 = measure(lambda: theirs.decode(z.to(dtype)), device)
                    row(f"comfy decode {tag}", sec2, peak2, out2.numel() * out2.element_size())
                    diff = (out - out2.float().clamp(-1, 1)).abs().max()
                    print(f"    ratio ours/comfy: time {sec / sec2:.2f}, peak {peak / peak2:.2f}; "
                          f"max |frame diff| {diff:.2e}")
                    del out2
                del out
            if len(works) > 1:
                lo, hi = min(works), max(works)
                print(f"  decode work (peak - output) at F={hi} / F={lo}: "
                      f"{works[hi] / max(works[lo], 1):.3f}")


if __name__ == "__main__":
    main()
