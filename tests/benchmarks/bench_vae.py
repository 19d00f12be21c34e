"""VAE benchmark (a script, not a test): decode (and encode) time against ComfyUI's own Wan VAE on
the same weights, and our decode before/after the CPU fast paths of core/vae/layers.py.

    python tests/benchmarks/bench_vae.py --preset wan2.1 --size 64 --latent-frames 2,5
    python tests/benchmarks/bench_vae.py --weights default --latent-frames 5 --threads 1 --before
    COMFYUI_PATH=/opt/comfyui /opt/comfyui/venv/bin/python tests/benchmarks/bench_vae.py --comfy --memory

Runners, per size / frame count / dtype:
    ours            WanVAE.decode_raw (core)
    ours-before     the same with the reference ops the layers used before (--before; CPU fp32)
    ours-tiled      the same, spatially tiled (--tile N latent px; seams are blended, so its
                    difference to ours is a measure of the tiling, not an error)
    comfy           ComfyUI's comfy.ldm.wan WanVAE module .decode       (--comfy)
    comfy-sd.VAE    ComfyUI's whole path: comfy.sd.VAE(sd).decode        (--comfy)
    ours-node       the pack's "Causal VAE Decode" node under ComfyUI    (--comfy)

Before any timing, the outputs are compared (max |difference|, printed). Timing: one warm-up call
each, then --repeat rounds of A B .. B A; min / median / max and paired ratios (timing.py). Peak
memory (--memory) is measured separately: one fresh process per runner and case, one call each,
resident-set high-water mark minus the resident set before the call (CPU), or the CUDA allocator's
peak. The CPU default dtype is float32; bfloat16 rows on a CPU without bf16 matmul units are
emulated (several times slower) and are labelled so.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from core.vae import preset  # noqa: E402
from core.vae.config import detect_config  # noqa: E402
from core.vae.loader import build_vae  # noqa: E402
from core.vae.model import random_state_dict  # noqa: E402
from timing import (PACK_NAME, cpu_bf16_note, import_pack, interleaved, paired_ratio,  # noqa: E402
                    peak_rss, spread)
from vae_paths import reference_paths  # noqa: E402

MiB = 2 ** 20


def dtype_label(dtype: torch.dtype, device: torch.device) -> str:
    name = str(dtype)[6:]
    if dtype == torch.bfloat16 and device.type == "cpu":
        name += f" ({cpu_bf16_note()})"
    return name


def setup_comfy(device: torch.device):
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return None
    sys.path.append(path)
    cli_args = importlib.import_module("comfy.cli_args")
    cli_args.args.cpu = device.type == "cpu"
    cli_args.args.use_pytorch_cross_attention = True
    importlib.import_module("comfy.model_management")
    return path


def comfy_module(cfg, sd, device, dtype):
    """ComfyUI's WanVAE module of the same widths holding the same weights."""
    module = importlib.import_module("comfy.ldm.wan.vae" if cfg.version == "2.1"
                                     else "comfy.ldm.wan.vae2_2")
    kwargs = dict(dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                  num_res_blocks=cfg.num_res_blocks,
                  temperal_downsample=list(cfg.temporal_downsample))
    if cfg.version == "2.2":
        kwargs["dec_dim"] = cfg.dec_dim
    model = module.WanVAE(**kwargs).eval()
    model.load_state_dict(sd, strict=True)
    return model.to(device=device, dtype=dtype)


def comfy_sd_vae(sd, dtype):
    """ComfyUI's own VAE object (what its VAELoader returns) built from the state dict."""
    comfy_sd = importlib.import_module("comfy.sd")
    vae = comfy_sd.VAE(sd=dict(sd), dtype=dtype)
    vae.throw_exception_if_invalid()
    return vae


def node_decoder(ours):
    """The pack's VAE Decode node, with a VAE handle as its loader would make (ComfyUI host)."""
    import_pack()
    handles = importlib.import_module(f"{PACK_NAME}.nodes.handles")
    host = importlib.import_module(f"{PACK_NAME}.nodes.host")
    vae_nodes = importlib.import_module(f"{PACK_NAME}.nodes.vae_nodes")
    ours.model.eval().requires_grad_(False)
    handle = handles.VAEHandle(vae=ours, hosted=host.HostedModel(ours.model), name="bench")
    node = vae_nodes.FlowDiTVAEDecode()
    return lambda z: node.decode(handle, {"samples": z})[0]


def load_weights(args):
    if args.weights:
        from core.checkpoint import read_state_dict, strip_prefix
        from core.vae.config import MARKER_KEY

        path = args.weights
        if path == "default":
            from core.default_model import bundle
            path = bundle.VAE_PATH
        sd = strip_prefix(read_state_dict(path, "cpu"), marker_key=MARKER_KEY)
        sd = {k: v.float() for k, v in sd.items()}
        return detect_config(sd), sd, f"weights {args.weights}"
    cfg = preset(args.preset)
    return cfg, random_state_dict(cfg, seed=0), f"random weights, preset {args.preset}"


def build_runners(args, cfg, sd, device, dtype, size, f, only=None):
    """{name: (call, output -> frames [T, H, W, C] in [0, 1] for the cross-check)}."""
    s = cfg.spatial_stride
    g = torch.Generator().manual_seed(f)
    z = torch.randn(1, cfg.z_dim, f, size // s, size // s, generator=g).to(device)
    want = lambda name: only is None or name == only  # noqa: E731
    as_frames = lambda v: ((v[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)  # noqa: E731
    runners = {}
    ours = build_vae(cfg, sd, device, dtype) if any(
        want(n) for n in ("ours", "ours-before", "ours-node", "ours-tiled")) else None
    if want("ours"):
        runners["ours"] = (lambda: ours.decode_raw(z), as_frames)
    if args.tile and want("ours-tiled"):
        from core.vae import TileSpec
        spec = TileSpec(args.tile, max(1, args.tile // 4))
        runners["ours-tiled"] = (lambda: ours.decode_raw(z, tiling=spec), as_frames)
    if args.before and want("ours-before") and device.type == "cpu" and dtype == torch.float32:
        def before():
            with reference_paths(ours.model):
                return ours.decode_raw(z)
        runners["ours-before"] = (before, as_frames)
    if args.comfy:
        if want("comfy"):
            theirs = comfy_module(cfg, sd, device, dtype)
            zc = z.to(dtype)

            def comfy_decode():
                with torch.no_grad():
                    return theirs.decode(zc)
            runners["comfy"] = (comfy_decode, as_frames)
        if want("comfy-sd.VAE"):
            # ComfyUI detects a Wan2.1 VAE from its keys but assumes 16 latent channels (its
            # sd.py), so the pack's own 8-channel VAE has no whole-path counterpart there.
            if cfg.z_dim not in (16, 48):
                if only is None:
                    print(f"  comfy-sd.VAE skipped: ComfyUI's VAE loader assumes 16 (Wan2.1) or "
                          f"48 (Wan2.2) latent channels, this VAE has {cfg.z_dim}")
            else:
                whole = comfy_sd_vae(sd, dtype)
                runners["comfy-sd.VAE"] = (lambda: whole.decode(z),
                                           lambda v: v.reshape(-1, *v.shape[-3:]))
        if want("ours-node"):
            node = node_decoder(ours)
            runners["ours-node"] = (lambda: node(z), lambda v: v)
    return runners


def memory_child(args) -> None:
    """One runner, one case, one call in this fresh process: print the peak as JSON."""
    device, dtype = torch.device(args.device), getattr(torch, args.memory_child[2])
    size, f = int(args.memory_child[0]), int(args.memory_child[1])
    cfg, sd, _ = load_weights(args)
    if args.comfy:
        setup_comfy(device)
    runners = build_runners(args, cfg, sd, device, dtype, size, f, only=args.memory_child[3])
    (fn, _), = runners.values()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak, out = peak_rss(fn)
    print(json.dumps({"peak": peak, "out": out.numel() * out.element_size()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.1", help="random weights of this VAE preset")
    ap.add_argument("--weights", default=None,
                    help="a VAE file instead of random weights ('default': the pack's own VAE)")
    ap.add_argument("--size", default="64", help="comma-separated square pixel sizes")
    ap.add_argument("--latent-frames", default="5", help="comma-separated latent frame counts "
                    "(a 64 px Wan2.1 decode of 21 takes about a minute per call on a 2-core CPU)")
    ap.add_argument("--dtypes", default=None,
                    help="comma-separated; default float32 on the CPU, float32,bfloat16 on CUDA")
    ap.add_argument("--repeat", type=int, default=5,
                    help="ABBA rounds (2 samples each); 0: no timing (memory only)")
    ap.add_argument("--before", action="store_true",
                    help="also time ours with the reference ops used before the CPU fast paths")
    ap.add_argument("--tile", type=int, default=0, help="also decode tiled, this latent tile size")
    ap.add_argument("--comfy", action="store_true", help="compare with ComfyUI (COMFYUI_PATH)")
    ap.add_argument("--memory", action="store_true", help="also peak memory, in separate processes")
    ap.add_argument("--memory-runs", type=int, default=3, help="fresh processes per memory row")
    ap.add_argument("--encode", action="store_true", help="also time encode (ours vs comfy module)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    device = torch.device(args.device)
    if args.comfy and not setup_comfy(device):
        print("COMFYUI_PATH is not set: timing ours only, the comparison with ComfyUI is skipped")
        args.comfy = False
    dtypes = args.dtypes or ("float32" if device.type == "cpu" else "float32,bfloat16")
    cfg, sd, source = load_weights(args)
    print(f"{cfg}; {source}; device {device}, {torch.get_num_threads()} threads; "
          f"{args.repeat} ABBA rounds")
    for dname in dtypes.split(","):
        dtype = getattr(torch, dname)
        for size in [int(v) for v in args.size.split(",")]:
            for f in [int(v) for v in args.latent_frames.split(",")]:
                tag = (f"{dtype_label(dtype, device)} {size}px F={f} "
                       f"(T={(f - 1) * cfg.temporal_stride + 1})")
                print(f"\n== decode {tag}")
                runners = build_runners(args, cfg, sd, device, dtype, size, f)
                outs = {name: conv(fn()) for name, (fn, conv) in runners.items()}
                ref = outs["ours"]
                for name, out in outs.items():
                    if name != "ours":
                        print(f"  max |frame difference| ours vs {name}: "
                              f"{(out.float() - ref).abs().max():.2e} (frames in [0, 1])")
                del outs, ref
                sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
                times = interleaved({n: fn for n, (fn, _) in runners.items()}, args.repeat, sync)
                for name, t in times.items():
                    print(f"  {name:<14} {spread(t)}")
                for name, t in times.items():
                    if name != "ours":
                        print(f"  ratio ours / {name:<14} (paired, median [min, max]): "
                              f"{paired_ratio(times['ours'], t)}")
                if "comfy-sd.VAE" in times and "ours-node" in times:
                    print(f"  ratio ours-node / comfy-sd.VAE (whole paths): "
                          f"{paired_ratio(times['ours-node'], times['comfy-sd.VAE'])}")
                names = list(runners)
                del runners
                if args.memory:
                    peaks = {}
                    for name in names:
                        cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-child",
                               str(size), str(f), dname, name]
                        runs = []
                        for _ in range(args.memory_runs):
                            res = subprocess.run(cmd, capture_output=True, text=True)
                            if res.returncode:
                                print(f"  memory {name}: failed: {res.stderr.strip()[-300:]}")
                                break
                            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
                        if not runs:
                            continue
                        peak = statistics.median(r["peak"] for r in runs)
                        peaks[name] = {"peak": peak, "out": runs[0]["out"]}
                        print(f"  memory {name:<14} peak {peak / MiB:8.1f} MiB (median of "
                              f"{len(runs)} processes; min {min(r['peak'] for r in runs) / MiB:.1f}"
                              f", max {max(r['peak'] for r in runs) / MiB:.1f}), work (peak - "
                              f"output) {(peak - runs[0]['out']) / MiB:8.1f} MiB")
                    for name in peaks:
                        if name != "ours" and "ours" in peaks:
                            print(f"  memory ratio ours / {name}: "
                                  f"{peaks['ours']['peak'] / max(1, peaks[name]['peak']):.3f}")
                if args.encode:
                    encode_rows(args, cfg, sd, device, dtype, size, f)


def encode_rows(args, cfg, sd, device, dtype, size, f) -> None:
    ours = build_vae(cfg, sd, device, dtype)
    t = (f - 1) * cfg.temporal_stride + 1
    g = torch.Generator().manual_seed(f)
    video = (torch.rand(1, 3, t, size, size, generator=g) * 2 - 1).to(device)
    runners = {"ours": lambda: ours.encode_raw(video)}
    if args.before and device.type == "cpu" and dtype == torch.float32:
        def before():
            with reference_paths(ours.model):
                return ours.encode_raw(video)
        runners["ours-before"] = before
    if args.comfy:
        theirs = comfy_module(cfg, sd, device, dtype)
        vc = video.to(dtype)

        def comfy_encode():
            with torch.no_grad():
                return theirs.encode(vc)
        runners["comfy"] = comfy_encode
    ref = runners["ours"]()
    print(f"== encode {size}px T={t}")
    for name, fn in runners.items():
        if name != "ours":
            diff = (fn().float() - ref).abs().max()
            print(f"  max |latent difference| ours vs {name}: {diff:.2e}")
    times = interleaved(runners, args.repeat)
    for name, tt in times.items():
        print(f"  {name:<14} {spread(tt)}")
        if name != "ours":
            print(f"  ratio ours / {name}: {paired_ratio(times['ours'], tt)}")


if __name__ == "__main__":
    main()
