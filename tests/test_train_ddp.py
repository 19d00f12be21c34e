"""DistributedDataParallel: 2 CPU processes (gloo, 127.0.0.1, a free port) configured through the
environment variables torchrun sets, so `train` initialises the process group itself. After a few
steps both ranks hold identical weights, and loss and weights match a 1-process run on the same
global batch.

Tolerance: 1e-5 absolute on weights and per-step losses (float32; the two runs differ only in the
summation order of the gradient average, ~1e-7 relative per step)."""
import os
import socket

import torch
import torch.multiprocessing as mp

from core.dit import WanDiT, get_preset
from core.train import TrainConfig, flow_matching_loss, mix_seed, train
from core.train.checkpointing import load_tensors, save_tensors

TOLERANCE = 1e-5
STEPS, BATCH = 3, 4


def _model():
    cfg = get_preset("tiny-t2v", text_dim=32, dim=32, ffn_dim=64, num_heads=1, num_layers=1)
    torch.manual_seed(0)
    return WanDiT(cfg)


def _data():
    g = torch.Generator().manual_seed(0)
    return [{"x0": torch.randn(16, 2, 4, 4, generator=g), "ctx": torch.randn(3, 32, generator=g),
             "id": i} for i in range(8)]


def _loss(model, batch, generator):
    """The flow loss with each sample's noise drawn from its own id (not from the per-rank
    generator), so that 2 ranks of 2 samples draw exactly what 1 rank of 4 draws; mean over
    samples, as DDP's gradient average over equal shards is the mean over the global batch."""
    losses = []
    for i in range(batch["x0"].shape[0]):
        g = torch.Generator().manual_seed(mix_seed(int(batch["id"][i]), 77))
        loss, _ = flow_matching_loss(model, batch["x0"][i:i + 1], batch["ctx"][i:i + 1],
                                     generator=g, sampling="logit_normal")
        losses.append(loss)
    return torch.stack(losses).mean(), {}


def _config(out):
    return TrainConfig(steps=STEPS, batch_size=BATCH, lr=1e-2, checkpoint_every=2, log_every=1,
                       progress=False, output_dir=str(out), seed=3, ema_decay=0.5)


def _worker(rank, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    model = _model()
    result = train(model, _loss, _data(), _config(out / "ddp"))
    save_tensors(dict(model.state_dict()), out / f"rank{rank}.safetensors")
    torch.save({"losses": torch.tensor(result.losses), "has_paths": result.weights is not None},
               out / f"rank{rank}.pt")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path), nprocs=2, start_method="spawn")
    w0, w1 = load_tensors(tmp_path / "rank0.safetensors"), load_tensors(tmp_path / "rank1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks diverged"
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["has_paths"] and not r1["has_paths"]  # only rank 0 writes files
    assert len(r0["losses"]) == STEPS

    torch.set_num_threads(1)
    single = _model()
    result = train(single, _loss, _data(), _config(tmp_path / "single"))
    diff_w = max(float((single.state_dict()[k] - w0[k]).abs().max()) for k in w0)
    diff_l = float((torch.tensor(result.losses) - r0["losses"]).abs().max())
    print(f"DDP vs single process: max |dweight| {diff_w:.2e}, max |dloss| {diff_l:.2e}")
    assert diff_w <= TOLERANCE and diff_l <= TOLERANCE
    moved = max(float((single.state_dict()[k] - _model().state_dict()[k]).abs().max()) for k in w0)
    assert moved > 100 * TOLERANCE  # the comparison is not vacuous: training changed the weights
    ckpts = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
    assert ckpts == ["latest", "step-0000002", "step-0000003"]
