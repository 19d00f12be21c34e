"""Memory of loading a ComfyUI fp8_scaled Wan expert at 14B width, and of a distill LoRA on it.

Writes an fp8_scaled file with the shapes of a Wan2.2 I2V-A14B expert (dim 5120, ffn 13824,
36 input channels, no CLIP branch) but only a few of its 40 blocks, then, each in a fresh process:

  load      load_dit(file): peak resident memory during the load (Linux VmHWM) minus the
            process's memory before it, next to the file size (target: <= 1.05 x), and the
            bytes of the loaded model's tensors (counted: parameters + buffers);
  merge     load, then a rank-64 LightX2V-layout LoRA merged into the fp8 weights (dequantise,
            add, re-quantise to fp8): model bytes after, and the extra peak while merging;
  runtime   load, then the same LoRA as run-time adapters (fp8 base untouched): added bytes.

    python tests/benchmarks/bench_fp8_load.py [--layers 2] [--layout old|new] [--rank 64]

CPU only; needs about 3 x the file size of free memory (the writer's copy is freed first).
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
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.dit.config import DiTConfig, dit_metadata  # noqa: E402
from core.dit.model import WanDiT  # noqa: E402

GB = 1e9


def expert_config(layers: int) -> DiTConfig:
    return DiTConfig("i2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40, num_layers=layers,
                     image_branch=False)


def write_file(path: Path, layers: int, layout: str) -> tuple[int, int]:
    """An fp8_scaled file of random values (fp8 bytes drawn directly: fast at 14B width)."""
    import json

    from safetensors.torch import save_file

    cfg = expert_config(layers)
    shapes = {k: v.shape for k, v in WanDiT(cfg, device="meta").state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in shapes.items():
        if key.startswith("blocks.") and key.endswith(".weight") and len(shape) == 2:
            raw = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
            raw[(raw & 0x7F) == 0x7F] = 0                        # no NaN codes
            layer = key[: -len(".weight")]
            sd[key] = raw.view(torch.float8_e4m3fn)
            scale = torch.tensor(1.0 / (448 * shape[1] ** 0.5))
            if layout == "old":
                sd[f"{layer}.scale_weight"] = scale
            else:
                sd[f"{layer}.weight_scale"] = scale
                sd[f"{layer}.comfy_quant"] = torch.tensor(
                    list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
        else:
            sd[key] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    if layout == "old":
        sd["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(sd, str(path), metadata=dit_metadata(cfg))
    per_block = sum(v.numel() * v.element_size() for k, v in sd.items() if k.startswith("blocks.0."))
    return path.stat().st_size, per_block


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")          # VmHWM := current RSS


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def child(path: Path, phase: str, rank: int) -> None:
    from core.dit.loader import load_dit
    from core.dit.random_weights import random_distill_lora
    from core.train.lora import load_lora

    torch.set_num_threads(2)
    lora = random_distill_lora(expert_config(1), rank=rank, seed=1) if phase != "load" else None
    if lora is not None:  # the same LoRA for every block of the file
        layers = int(os.environ["BENCH_LAYERS"])
        lora = {k.replace("blocks.0.", f"blocks.{i}."): v for i in range(layers)
                for k, v in lora.items()}
    _reset_peak()
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    model = load_dit(path, dtype=torch.bfloat16)
    seconds = time.perf_counter() - t0
    peak = _rss("VmHWM") - before
    size = path.stat().st_size
    loaded = _model_bytes(model)
    if phase == "load":
        print(f"load:    {seconds:5.1f} s, peak +{peak / GB:.3f} GB for a {size / GB:.3f} GB file "
              f"= {peak / size:.3f} x file; model tensors {loaded / GB:.3f} GB "
              f"= {loaded / size:.3f} x file")
        return
    _reset_peak()
    base = _rss("VmRSS")
    t0 = time.perf_counter()
    report = load_lora(model, lora, strength=1.0, mode=phase)
    seconds = time.perf_counter() - t0
    extra_peak = _rss("VmHWM") - base
    after = _model_bytes(model)
    lora_bytes = sum(v.numel() * v.element_size() for v in lora.values())
    print(f"{phase + ':':8s} {seconds:5.1f} s, {len(report.layers)} targets, LoRA file tensors "
          f"{lora_bytes / GB:.3f} GB; model tensors {loaded / GB:.3f} -> {after / GB:.3f} GB "
          f"(+{(after - loaded) / 1e6:.1f} MB); peak while applying +{extra_peak / GB:.3f} GB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="blocks of the 40 to write")
    p.add_argument("--layout", choices=("old", "new"), default="new")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--child", nargs=2, metavar=("FILE", "PHASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), args.child[1], args.rank)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
        size, per_block = write_file(path, args.layers, args.layout)
        whole = size + (40 - args.layers) * per_block
        print(f"{expert_config(args.layers)} | fp8_scaled ({args.layout} layout), "
              f"{size / GB:.3f} GB file ({per_block / GB:.3f} GB per block): the 40-block expert "
              f"would be {whole / GB:.1f} GB")
        env = {**os.environ, "BENCH_LAYERS": str(args.layers)}
        for phase in ("load", "merge", "runtime"):
            subprocess.run([sys.executable, __file__, "--child", str(path), phase,
                            "--rank", str(args.rank)], check=True, env=env)


if __name__ == "__main__":
    main()
