"""Resident weights of the two-expert (Wan2.2 A14B) sampler: one expert at a time.

Builds two random experts of the given width (I2V-A14B shape: in_dim 36, no image branch), pairs
them with the Wan2.2 A14B Experts node and samples through the Euler Flow Sampler node with the
fallback host (no ComfyUI): each expert is moved to the compute device when sampling reaches it
and the other one is moved off first. Prints, per step, which expert ran, the experts' weight
bytes on the compute device and (CUDA) the allocated memory, against the size of one expert.

    python tests/benchmarks/bench_a14b_experts.py [--dim 1024] [--ffn 4096] [--layers 4] [--steps 4]

On a CPU-only machine the compute device is the CPU, so both experts always count as resident;
the load/offload order is printed all the same.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from a14b_models import a14b_config  # noqa: E402
from conftest import import_pack  # noqa: E402


def weight_bytes(module: torch.nn.Module, device: torch.device) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.device.type == device.type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    pack = import_pack()
    host, handles = pack.nodes.host, pack.nodes.handles
    from core.dit.model import WanDiT
    from core.dit.random_weights import random_state_dict

    cfg = a14b_config("i2v", dim=args.dim, ffn_dim=args.ffn, num_heads=args.dim // 128, num_layers=args.layers)
    device = host.torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    experts = []
    for seed in (1, 2):
        dit = WanDiT(cfg, compute_dtype=dtype, dtype=dtype)
        dit.load_state_dict(random_state_dict(cfg, seed=seed))
        experts.append(handles.ModelHandle(hosted=host.HostedModel(dit.eval().requires_grad_(False)),
                                           name=f"expert{seed}", compute_dtype=dtype))
    high, low = experts
    one = weight_bytes(high.module, torch.device("cpu"))
    (pair,) = pack.NODE_CLASS_MAPPINGS["FlowDiTExpertPair"]().pair(high, low, "step", 0.0, args.steps // 2, 0.0, 0.0)
    g = torch.Generator().manual_seed(0)
    text = [[torch.randn(1, 16, cfg.text_dim, generator=g), {"pooled_output": None}]]
    frames, h, w = 5, 30, 52
    cond = [[text[0][0], {"concat_latent_image": torch.randn(1, 16, frames, h, w, generator=g),
                          "concat_mask": torch.ones(1, 4, frames, h, w)}]]
    latent = {"samples": torch.zeros(1, 16, frames, h, w)}
    sigmas = pack.NODE_CLASS_MAPPINGS["FlowDiTScheduler"]().schedule(args.steps, 5.0, 1.0)[0]

    rows = []
    sampler = pack.nodes.sampling

    class Recorder(host.Progress):
        def update(self, done, total=None, preview=None):
            on = [e.name for e in experts if next(e.module.parameters()).device.type == device.type]
            resident = sum(weight_bytes(e.module, device) for e in experts)
            cuda = torch.cuda.memory_allocated() if device.type == "cuda" else None
            rows.append((done, on, resident, cuda))

    original = sampler.host.Progress
    sampler.host.Progress = Recorder
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sampler.FlowDiTSampler().sample(pair, cond, cond, latent, sigmas, "euler", 1.0, 0)
    finally:
        sampler.host.Progress = original
    print(f"device {device}, {dtype}; one expert: {one / 2**20:.1f} MiB of weights "
          f"(dim {cfg.dim}, ffn {cfg.ffn_dim}, {cfg.num_layers} layers); switch after step {args.steps // 2}")
    print("step  experts on device       weights on device   cuda allocated")
    for done, on, resident, cuda in rows:
        cuda_text = f"{cuda / 2**20:10.1f} MiB" if cuda is not None else "         n/a"
        print(f"{done:4d}  {', '.join(on):22s}  {resident / 2**20:10.1f} MiB   {cuda_text}")
    if device.type == "cuda":
        print(f"peak cuda allocated: {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB "
              f"(one expert {one / 2**20:.1f} MiB, both {2 * one / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
