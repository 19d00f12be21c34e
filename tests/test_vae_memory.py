"""Memory: decoding 4x more latent frames raises the peak by no more than the larger output.

How it is measured: PyTorch keeps no allocation statistics for the CPU, so each decode runs in a
fresh subprocess with glibc told to serve every allocation above 64 KiB by mmap
(MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set at once and the resident set
tracks the live tensors. The child resets the kernel's peak-RSS mark (/proc/self/clear_refs, 5)
right before the decode, reads the peak (VmHWM) afterwards, and reports peak - RSS-before, i.e.
the working memory of the decode including its output. A decoder that kept every chunk's
activations, or concatenated chunk outputs (holding two copies), would exceed the bound below by
about one output buffer or more; a streaming decoder stays at one chunk's working set plus the
output, whatever the length. On CUDA the same comparison uses max_memory_allocated (marked gpu).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from core.vae import PRESETS, load_vae
from core.vae.model import random_state_dict
frames, size, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
vae = load_vae(random_state_dict(PRESETS["test-2.1"]), device=device)
z = torch.randn(1, 16, frames, size // 8, size // 8, device=device)
vae.decode(z[:, :, :2])                            # warm up kernels and lazy initialisation

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
else:
    before = rss("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
out = vae.decode(z)
if device == "cuda":
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
else:
    peak = rss("VmHWM:")
print(json.dumps({"growth": peak - before, "output": out.numel() * out.element_size()}))
"""


def measure(frames: int, size: int, device: str = "cpu") -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", CHILD, str(frames), str(size), device],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _check(short, long):
    work_short = short["growth"] - short["output"]
    extra_output = long["output"] - short["output"]
    # Generous: a tenth of the short run's working set plus 4 MiB for allocator noise. Measured
    # on the CPU: +13.1 MiB growth for +12.0 MiB of output; a full (unstreamed) pass: +47.7 MiB.
    bound = extra_output + 0.1 * max(work_short, 0) + 4 * 2 ** 20
    assert long["growth"] - short["growth"] <= bound, (short, long, bound)
    # The aim: the working set excluding the output is flat (measured ratio 1.03).
    work_long = long["growth"] - long["output"]
    assert work_long <= 1.10 * work_short + 2 ** 20, (work_long, work_short)


@pytest.mark.slow
def test_decode_memory_is_flat_in_frames():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak memory")
    short, long = measure(5, 128), measure(21, 128)
    _check(short, long)
    # The output itself (21 latent frames = 81 pixel frames at 128x128) dominates the growth.
    assert long["output"] == 3 * 81 * 128 * 128 * 4


@pytest.mark.gpu
def test_decode_memory_is_flat_in_frames_cuda():
    _check(measure(5, 256, "cuda"), measure(21, 256, "cuda"))
