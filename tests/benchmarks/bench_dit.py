"""Benchmark of one DiT forward: time, tokens/s, achieved TFLOP/s and peak memory, optionally next to
ComfyUI's own WanModel on the same weights and input (a ratio measured in one run).

Not a test (pytest collects test_*.py only). Run from the repository root, e.g.:

    python tests/benchmarks/bench_dit.py --preset wan2.1-t2v-1.3b --layers 2 \
        --width 416 --height 240 --frames 9 --dtype fp32
    COMFYUI_PATH=/path/to/ComfyUI python tests/benchmarks/bench_dit.py ... --comfy

Fairness: each side gets the input its own pipeline uses (with --per-token-t, ours per-token
t [B, L] as our TI2V sampler passes it, ComfyUI per-frame t [B, F] as its
model_base.WAN22.process_timestep does); the outputs are compared (max |ours - theirs|) before any
timing; timing is one warm-up call each, then --repeat rounds of A B B A, printed as
median [min, max] with the paired ratio (timing.py). Peak memory is measured in a separate
process per side (--memory; one forward in a fresh process: CUDA allocator peak, or the CPU
resident-set high-water mark minus the resident set before the call). CPU default dtype: fp32;
bf16 on a CPU without bf16 matmul units is emulated (several times slower) and labelled so, and
it compares different precisions (ours keeps fp32 islands around modulation, ComfyUI runs them
in bf16). --whole (with --comfy) also times one sampling step (cfg 5, Euler) through the whole
paths: ComfyUI's ModelPatcher from comfy.sd.load_diffusion_model_state_dict sampled by
comfy.sample.sample_custom, against the pack's FlowDiT Sampler node.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `core`
sys.path.insert(0, str(Path(__file__).resolve().parent))      # timing.py

from core.dit import available_attention_backends, get_preset, load_dit  # noqa: E402
from core.dit.loader import parse_dtype  # noqa: E402
from core.dit.random_weights import random_state_dict  # noqa: E402
from timing import (cpu_bf16_note, import_pack, interleaved, paired_ratio, peak_rss,  # noqa: E402
                    spread)

# Pixel -> latent strides of the VAEs (frames, height, width): Wan2.1 VAE for 16-channel models,
# Wan2.2 VAE for the 48-channel TI2V model. Latent frames = (frames - 1) / 4 + 1.
VAE_STRIDES = {16: (4, 8, 8), 48: (4, 16, 16)}
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


def setup_comfy(device: torch.device, attention: str) -> None:
    """Make COMFYUI_PATH importable and set ComfyUI's CLI options before its model manager loads."""
    if os.environ["COMFYUI_PATH"] not in sys.path:
        sys.path.append(os.environ["COMFYUI_PATH"])
    cli_args = importlib.import_module("comfy.cli_args")
    cli_args.args.cpu = device.type == "cpu"
    # 'pytorch': the same SDPA kernel as ours; 'default': whatever ComfyUI picks by itself.
    cli_args.args.use_pytorch_cross_attention = attention == "pytorch"
    importlib.import_module("comfy.model_management")


def comfy_model(cfg, sd, device, dtype, attention: str):
    """ComfyUI's WanModel with the same weights (needs COMFYUI_PATH and ComfyUI's dependencies)."""
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
    p.add_argument("--dtype", default=None, help="compute dtype: fp32, bf16, fp16 "
                                                 "(default: fp32 on the CPU, bf16 on CUDA)")
    p.add_argument("--weight-dtype", default=None, help="weight storage, e.g. fp8_e4m3fn")
    p.add_argument("--attention", default="sdpa", help=f"ours: {available_attention_backends()}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=5,
                   help="ABBA rounds (2 samples each); 0: no timing (memory only)")
    p.add_argument("--per-token-t", action="store_true", help="TI2V-style timesteps (first "
                   "latent frame clean): ours per token [B, L], ComfyUI per frame [B, F]")
    p.add_argument("--comfy", action="store_true", help="also time ComfyUI's WanModel")
    p.add_argument("--comfy-attention", choices=["pytorch", "default"], default="pytorch")
    p.add_argument("--whole", action="store_true",
                   help="with --comfy: also one sampling step through both whole paths")
    p.add_argument("--memory", action="store_true", help="peak memory, in separate processes")
    p.add_argument("--memory-runs", type=int, default=3, help="fresh processes per memory row")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.comfy and not os.environ.get("COMFYUI_PATH"):
        print("COMFYUI_PATH is not set: timing ours only, the comparison with ComfyUI is skipped")
        args.comfy = args.whole = False
    device = torch.device(args.device)
    args.dtype = args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    runners, tag, info = build(args, device)
    if args.memory_child:
        fn = runners[args.memory_child]
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.no_grad():
                fn()
            torch.cuda.synchronize()
            print(json.dumps({"peak": torch.cuda.max_memory_allocated() - base}))
        else:
            with torch.no_grad():
                peak, _ = peak_rss(fn)
            print(json.dumps({"peak": peak}))
        return
    print(tag)
    with torch.no_grad():
        outs = {name: fn() for name, fn in runners.items()}
    for pair in (("ours", "comfyui"), ("ours-node step", "comfyui-ModelPatcher step")):
        if all(n in outs for n in pair):
            a, b = (outs[n].float() for n in pair)
            print(f"max |{pair[0]} - {pair[1]}|: {(a - b).abs().max():.3e} "
                  f"(output max |.| {b.abs().max():.3e})")
    del outs
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        times = interleaved(runners, args.repeat, sync)
    for name, t in times.items():
        report(name, t, info, device, parse_dtype(args.dtype))
    for a, b in (("ours", "comfyui"), ("ours-node step", "comfyui-ModelPatcher step")):
        if a in times and b in times:
            print(f"ratio {a} / {b} wall time (paired, median [min, max]): "
                  f"{paired_ratio(times[a], times[b])}")
    if args.memory:
        peaks = {}
        for name in runners:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                   "--memory-child", name]
            runs = []
            for _ in range(args.memory_runs):
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    print(f"memory {name}: failed: {res.stderr.strip()[-300:]}")
                    break
                runs.append(json.loads(res.stdout.strip().splitlines()[-1])["peak"])
            if not runs:
                continue
            peaks[name] = statistics.median(runs)
            print(f"memory {name:>26}: peak {peaks[name] / 2**20:9.1f} MiB above the resident "
                  f"set before the call (median of {len(runs)} fresh processes; min "
                  f"{min(runs) / 2**20:.1f}, max {max(runs) / 2**20:.1f})")
        for a, b in (("ours", "comfyui"), ("ours-node step", "comfyui-ModelPatcher step")):
            if a in peaks and b in peaks:
                print(f"memory ratio {a} / {b}: {peaks[a] / max(1, peaks[b]):.3f}")


def build(args, device):
    """The runners {name: fn}, the header line, and what `report` needs."""
    cfg = get_preset(args.preset, **({"num_layers": args.layers} if args.layers else {}))
    dtype = parse_dtype(args.dtype)
    st, sh, sw = VAE_STRIDES.get(cfg.out_dim, VAE_STRIDES[16])
    latent = ((args.frames - 1) // st + 1, args.height // sh, args.width // sw)
    per_frame = (latent[1] // cfg.patch_size[1]) * (latent[2] // cfg.patch_size[2])
    tokens = latent[0] * per_frame
    image_len = 257 if cfg.has_image_branch else 0
    flops = model_flops(cfg, tokens, args.text_len, image_len) * args.batch

    sd = random_state_dict(cfg, seed=0, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, cfg.in_dim, *latent, generator=gen, device=device)
    context = torch.randn(args.batch, args.text_len, cfg.text_dim, generator=gen, device=device)
    clip = (torch.randn(args.batch, image_len, cfg.image_dim, generator=gen, device=device)
            if image_len else None)
    t = torch.full((args.batch,), 700.0, device=device)
    t_theirs = t
    if args.per_token_t:
        # What each pipeline hands its model for a TI2V step with a clean first latent frame:
        # ours per token [B, L], ComfyUI per latent frame [B, F]
        # (model_base.WAN22.process_timestep).
        t = t[:, None].repeat(1, tokens)
        t[:, :per_frame] = 0.0
        t_theirs = torch.full((args.batch, latent[0]), 700.0, device=device)
        t_theirs[:, 0] = 0.0
    precision = args.dtype
    if dtype == torch.bfloat16 and device.type == "cpu":
        precision += (f" ({cpu_bf16_note()}; different precisions: ours keeps fp32 islands, "
                      f"ComfyUI runs them in bf16)")
    tag = (f"{cfg} | {args.width}x{args.height}x{args.frames} px -> latent {latent}, {tokens} "
           f"tokens, batch {args.batch}, text {args.text_len} | {precision} on {device}, "
           f"{torch.get_num_threads()} threads | {flops / 1e12:.3f} TFLOP per forward | "
           f"{'per-token t (ComfyUI: per-frame t)' if args.per_token_t else 'one t per sample'}")
    want = lambda name: args.memory_child in (None, name)  # noqa: E731
    if args.comfy:
        setup_comfy(device, args.comfy_attention)
    runners = {}
    if want("ours"):
        ours = load_dit(dict(sd), device=device, dtype=dtype, attention=args.attention,
                        weight_dtype=args.weight_dtype, num_heads=cfg.num_heads)
        runners["ours"] = lambda: ours(x, t, context, clip)
    if args.comfy and want("comfyui"):
        theirs = comfy_model(cfg, sd, device, dtype, args.comfy_attention)
        xc, cc = x.to(dtype), context.to(dtype)     # ComfyUI's model_base casts inputs like this
        clipc = clip.to(dtype) if clip is not None else None
        runners["comfyui"] = lambda: theirs(xc, t_theirs, cc, clip_fea=clipc)
    if args.whole:
        runners.update(whole_paths(args, cfg, sd, device, dtype, latent, context, want))
    return runners, tag, (tokens * args.batch, flops)


def whole_paths(args, cfg, sd, device, dtype, latent, context, want):
    """One sampling step (Euler, cfg 5) through ComfyUI's ModelPatcher + sample_custom, and
    through the pack's FlowDiT Sampler node, from the same empty latent, text and seed."""

    runners = {}
    # One whole step, noise to data: ComfyUI divides the final latent by (1 - last sigma)
    # (model_sampling.inverse_noise_scaling), so a partial schedule would not compare.
    sigmas = torch.tensor([1.0, 0.0])
    cfg_scale = 5.0
    empty = torch.zeros(args.batch, cfg.out_dim, *latent)
    positive = [[context.float().cpu(), {}]]
    negative = [[torch.zeros_like(context).float().cpu(), {}]]
    if want("comfyui-ModelPatcher step"):
        comfy_sd = importlib.import_module("comfy.sd")
        comfy_sample = importlib.import_module("comfy.sample")
        comfy_samplers = importlib.import_module("comfy.samplers")
        patcher = comfy_sd.load_diffusion_model_state_dict(
            {k: v.to(dtype) for k, v in sd.items()}, model_options={"dtype": dtype})
        sampler = comfy_samplers.sampler_object("euler")
        noise = comfy_sample.prepare_noise(empty, 0)

        def comfy_step():
            return comfy_sample.sample_custom(patcher, noise, cfg_scale, sampler, sigmas, positive,
                                              negative, empty, disable_pbar=True, seed=0)
        runners["comfyui-ModelPatcher step"] = comfy_step
    if want("ours-node step"):
        name = import_pack().__name__
        handles = importlib.import_module(f"{name}.nodes.handles")
        host = importlib.import_module(f"{name}.nodes.host")
        sampling = importlib.import_module(f"{name}.nodes.sampling")
        ours = load_dit(dict(sd), device="cpu", dtype=dtype, attention=args.attention,
                        weight_dtype=args.weight_dtype).eval().requires_grad_(False)
        handle = handles.ModelHandle(hosted=host.HostedModel(ours), name="bench",
                                     compute_dtype=dtype)
        node = sampling.FlowDiTSampler()

        def ours_step():
            return node.sample(handle, positive, negative, {"samples": empty}, sigmas,
                               solver="euler", cfg=cfg_scale, seed=0)[0]["samples"]
        runners["ours-node step"] = ours_step
    return runners


def report(name: str, seconds: list[float], info, device: torch.device, dtype: torch.dtype) -> None:
    tokens, flops = info
    sec = statistics.median(seconds)
    line = f"{name:>26}: {spread(seconds)}/call"
    if "step" not in name:
        tflops = flops / sec / 1e12
        line += f", {tokens / sec:8.0f} tokens/s, {tflops:8.3f} TFLOP/s"
        if device.type == "cuda" and "H100" in torch.cuda.get_device_name(device) \
                and dtype == torch.bfloat16:
            line += f", {100 * tflops / H100_BF16_PEAK_TFLOPS:.1f}% of H100 bf16 peak"
    print(line)


if __name__ == "__main__":
    main()
