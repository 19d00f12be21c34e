"""Sequence-parallel (Ulysses) and CFG-parallel inference on CPU: 2 and 4 gloo processes spawned
here compute the DiT forward on their shards, and the gathered result must equal the ordinary
one-process forward of a separately built model on the same weights and inputs.

Tolerance: float64 models, 1e-10. The sharded run does the same arithmetic per token and per
head; only matmul blocking over fewer rows may change the rounding (~1e-16 relative).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
import torch.multiprocessing as mp

from core.dit import WanDiT, get_preset
from core.parallel import ParallelDiT, RankFailure, close_mesh, init_mesh, shard_weights
from core.parallel.mesh import ParallelMesh, check_heads, check_layout

ROOT = Path(__file__).resolve().parent.parent
F64 = dict(rtol=1e-10, atol=1e-10)
# Four 16-wide heads, so that 2 and 4 ranks both split them.
PRESETS = {"t2v": "tiny-t2v", "i2v": "tiny-i2v", "ti2v": "tiny-ti2v"}


def _model(kind: str) -> WanDiT:
    cfg = get_preset(PRESETS[kind], num_heads=4)
    torch.manual_seed(11)
    model = WanDiT(cfg, compute_dtype=torch.float64, dtype=torch.float64)
    with torch.no_grad():   # non-zero gates, so every block does something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(kind: str, grid: tuple[int, int, int], batch: int = 1):
    """x, t, context, clip_fea for a latent whose token grid is `grid` (patch 1x2x2)."""
    cfg = get_preset(PRESETS[kind])
    f, h, w = grid
    g = torch.Generator().manual_seed(sum(grid) + batch)
    x = torch.randn(batch, cfg.in_dim, f, 2 * h, 2 * w, generator=g, dtype=torch.float64)
    context = torch.randn(batch, 5, cfg.text_dim, generator=g, dtype=torch.float64)
    clip = (torch.randn(batch, 3, cfg.image_dim, generator=g, dtype=torch.float64)
            if kind == "i2v" else None)
    t = torch.rand(batch, generator=g, dtype=torch.float64) * 1000
    if kind == "ti2v":                  # per-token timesteps: the first frame's tokens at t = 0
        t = t[:, None].repeat(1, f * h * w)
        t[:, :h * w] = 0.0
    return x, t, context, clip


# (kind, token grid, batch): 24 tokens divide by 2 and 4; 9 and 15 tokens do not.
CASES = [("t2v", (2, 3, 4), 1), ("t2v", (3, 3, 1), 1), ("i2v", (3, 1, 5), 1),
         ("ti2v", (3, 3, 1), 1), ("t2v", (2, 3, 4), 2)]


def _worker(rank, world, port, out, layouts):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    results = {}
    for ulysses, cfg_parallel, sharded in layouts:
        if ulysses * (2 if cfg_parallel else 1) != world:
            continue
        mesh = init_mesh(ulysses, cfg_parallel, timeout_s=60)
        for i, (kind, grid, batch) in enumerate(CASES):
            if cfg_parallel and batch % 2:
                continue
            model = shard_weights(_model(kind)) if sharded else _model(kind)
            dit = ParallelDiT(model, mesh)
            x, t, context, clip = _inputs(kind, grid, batch)
            with torch.no_grad():
                key = f"u{ulysses}c{int(cfg_parallel)}s{int(sharded)}-{i}"
                results[key] = dit(x, t, context, clip)
    torch.save(results, out / f"rank{rank}.pt")
    close_mesh(mesh)        # without it gloo's threads may abort the process as it exits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, layouts, tmp_path):
    mp.start_processes(_worker, args=(world, _free_port(), tmp_path, layouts), nprocs=world,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    assert ranks[0], "no case ran"
    for key, value in ranks[0].items():
        reference = _forward(key)
        for r, got in enumerate(ranks):       # every rank returns the whole, gathered result
            torch.testing.assert_close(got[key], reference, **F64, msg=f"{key} on rank {r}")
    return ranks[0]


def _forward(key: str) -> torch.Tensor:
    kind, grid, batch = CASES[int(key.rsplit("-", 1)[1])]
    x, t, context, clip = _inputs(kind, grid, batch)
    with torch.no_grad():
        return _model(kind)(x, t, context, clip)


def test_two_ranks_equal_one_process(tmp_path):
    """Ulysses 2 (T2V, I2V with concat channels and CLIP tokens, TI2V per-token t, odd token
    counts), CFG-parallel 2 (the batch of two guidance passes split between the ranks), and
    Ulysses 2 with the weights sharded by FSDP2."""
    done = _run(2, [(2, False, False), (1, True, False), (2, False, True)], tmp_path)
    assert sum(k.startswith("u2c0s0") for k in done) == len(CASES)
    assert sum(k.startswith("u1c1s0") for k in done) == 1
    assert sum(k.startswith("u2c0s1") for k in done) == len(CASES)


@pytest.mark.slow
def test_four_ranks_equal_one_process(tmp_path):
    """Ulysses 4 (9 tokens: three ranks' worth of padding) and Ulysses 2 x CFG 2."""
    done = _run(4, [(4, False, False), (2, True, False)], tmp_path)
    assert sum(k.startswith("u4c0") for k in done) == len(CASES)
    assert sum(k.startswith("u2c1") for k in done) == 1


def test_layout_errors_are_clear():
    with pytest.raises(ValueError, match=r"--ulysses 4 .*needs exactly 8.*nproc_per_node 8"):
        check_layout(4, 4, cfg_parallel=True)
    with pytest.raises(ValueError, match=r"12 heads do not divide by --ulysses 5; use one of \[1, 2, 3, 4, 6, 12\]"):
        check_heads(12, 5)
    with pytest.raises(ValueError, match="heads do not divide"):
        ParallelDiT(_model("t2v"), ParallelMesh(ulysses=3, cfg=1, rank=0))
    check_heads(40, 8)                       # Wan 14B: 40 heads over 8 GPUs is fine


def _dying_worker(rank, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    mesh = init_mesh(2, False, timeout_s=20)
    if rank == 1:
        os._exit(3)                          # a rank dies (out of memory, killed, ...)
    x, t, context, clip = _inputs("t2v", (2, 3, 4))
    start = time.monotonic()
    try:
        with torch.no_grad():
            ParallelDiT(_model("t2v"), mesh)(x, t, context, clip)
        message = "no error"
    except RankFailure as err:
        message = str(err)
    (out / "rank0.txt").write_text(f"{time.monotonic() - start:.1f}\n{message}")
    os._exit(0)


def test_a_dead_rank_stops_the_others_with_a_message(tmp_path):
    ctx = mp.start_processes(_dying_worker, args=(2, _free_port(), tmp_path), nprocs=2,
                             start_method="spawn", join=False)
    deadline = time.monotonic() + 90
    while not all(p.exitcode is not None for p in ctx.processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in ctx.processes if p.exitcode is None]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung after its peer died"
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert "rank 0" in message and "another rank probably died" in message, message
    assert float(seconds) < 30


def _frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("*.png"))
    assert files, f"nothing written in {folder}"
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--ulysses", "2"], ["--cfg-parallel"]])
def test_torchrun_generate_writes_the_one_process_video(tmp_path, flags):
    """`torchrun --nproc_per_node 2 -m core generate ... --ulysses 2` (or --cfg-parallel) writes
    the video one process writes, from rank 0 only. Bar: PSNR >= 50 dB over the uint8 frames (fp32
    sums in another order may flip a rounding; anything wrong in the split is far below 30 dB)."""
    common = ["generate", "--prompt", "a red circle moving right on a black background",
              "--steps", "4", "--frames", "9", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "core", *common, "--out", str(tmp_path / "one") + "/"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "core", *common, *flags,
                          "--out", str(tmp_path / "two") + "/"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote ") == 1, two.stdout            # rank 0 alone writes
    a, b = _frames(tmp_path / "one"), _frames(tmp_path / "two")
    assert a.shape == b.shape
    mse = float(((a - b) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    print(f"{' '.join(flags)}: PSNR {psnr:.1f} dB against one process")
    assert psnr >= 50.0
