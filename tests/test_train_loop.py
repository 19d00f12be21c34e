"""The training loop: it learns, it resumes exactly, its checkpoints survive a crash mid-write,
gradient checkpointing changes nothing but memory, and it reports what it did."""
import csv

import pytest
import torch

import core.train.checkpointing as checkpointing
from core.dit import WanDiT, get_preset
from core.train import (DatasetBatches, TrainConfig, flow_matching_loss, gradient_checkpointing,
                        load_trained, train)
from core.train.checkpointing import latest_checkpoint, read_checkpoint

torch.set_num_threads(1)


def tiny_dit(seed=0):
    cfg = get_preset("tiny-t2v", text_dim=32, dim=32, ffn_dim=64, num_heads=1, num_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanDiT(cfg)


def fixed_batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 16, 2, 4, 4, generator=g)
    ctx = torch.randn(n, 3, 32, generator=g)
    return [{"x0": x0[i], "ctx": ctx[i]} for i in range(n)]


def loss_fn(model, batch, generator):
    return flow_matching_loss(model, batch["x0"], batch["ctx"], generator=generator,
                              sampling="logit_normal")


def eval_loss(model, data, seeds=20):
    """The loss averaged over 20 fixed noise draws (the training loss itself is very noisy)."""
    x0 = torch.stack([d["x0"] for d in data])
    ctx = torch.stack([d["ctx"] for d in data])
    with torch.no_grad():
        return sum(float(flow_matching_loss(model, x0, ctx, sampling="logit_normal",
                                            generator=torch.Generator().manual_seed(1000 + s))[0])
                   for s in range(seeds)) / seeds


def test_a_few_steps_fit_one_batch(tmp_path):
    model, data = tiny_dit(), fixed_batch()
    before = eval_loss(model, data)
    result = train(model, loss_fn, data, TrainConfig(steps=60, batch_size=4, lr=1e-2,
                                                     checkpoint_every=0, log_every=20,
                                                     output_dir=str(tmp_path), progress=False))
    after = eval_loss(model, data)
    print(f"fit one batch: eval loss {before:.4f} -> {after:.4f}")
    assert after < 0.85 * before
    assert result.step == 60 and len(result.losses) == 60
    for name in ("trained.safetensors", "loss.csv", "loss.png"):
        assert (tmp_path / name).is_file()
    with open(tmp_path / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    fresh = load_trained(tiny_dit(seed=5), result.weights)
    assert torch.equal(fresh.head.head.weight, model.head.head.weight)


class Interrupt(Exception):
    pass


def noisy_loss(model, batch, generator):
    """The flow loss times a factor from the *global* RNG, so resuming must restore it too."""
    loss, info = loss_fn(model, batch, generator)
    return loss * (1 + 0.1 * torch.rand(())), info


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    cfg = dict(steps=6, batch_size=2, lr=3e-3, warmup_steps=2, lr_schedule="cosine",
               ema_decay=0.9, checkpoint_every=2, log_every=1, progress=False, weight_decay=0.01)
    data = fixed_batch(n=5)  # 5 samples, batch 2: the epochs wrap mid-batch
    full = train(tiny_dit(), noisy_loss, data, TrainConfig(output_dir=str(tmp_path / "a"), **cfg))

    def crash_at_5(step, loss, info):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_dit(), noisy_loss, data, TrainConfig(output_dir=str(tmp_path / "b"), **cfg),
              callback=crash_at_5)
    # Resume into a model with *different* initial weights: everything must come from disk.
    resumed = train(tiny_dit(seed=9), noisy_loss, data,
                    TrainConfig(output_dir=str(tmp_path / "b"), **cfg))
    assert resumed.resumed_from == 4
    assert resumed.losses == full.losses  # bit for bit, all 6 steps (the log was cut back to 4)
    a, _, sa = read_checkpoint(full.checkpoint)
    b, _, sb = read_checkpoint(resumed.checkpoint)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ema_a = checkpointing.load_tensors(full.ema_weights)
    ema_b = checkpointing.load_tensors(resumed.ema_weights)
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert sa["step"] == sb["step"] == 6


def test_crash_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, checkpoint_every=2, log_every=1,
                      progress=False, output_dir=str(tmp_path))
    real_save = torch.save
    calls = []

    def torn_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the checkpoint at step 4: half a file, then the power goes
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 torn")
            raise OSError("simulated crash mid-write")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", torn_save)
    with pytest.raises(OSError, match="simulated crash"):
        train(tiny_dit(), loss_fn, fixed_batch(), cfg)
    monkeypatch.setattr(checkpointing.torch, "save", real_save)

    root = tmp_path / "checkpoints"
    latest = latest_checkpoint(root)
    assert latest.name == "step-0000002"
    weights, _, state = read_checkpoint(latest)  # loads, with weights_only=True
    assert state["step"] == 2 and weights
    assert not [p for p in root.iterdir() if p.name.startswith(".partial")]
    result = train(tiny_dit(), loss_fn, fixed_batch(), cfg)
    assert result.resumed_from == 2 and result.step == 4


def test_gradient_checkpointing_same_gradients_and_restored():
    data = fixed_batch(n=2)
    batch = DatasetBatches(data).get_batch(1, 2, 0, 1, 0)
    grads = []
    for enabled in (False, True):
        model = tiny_dit()
        with gradient_checkpointing(model, enabled) as wrapped:
            assert wrapped == (1 if enabled else 0)
            loss, _ = loss_fn(model, batch, torch.Generator().manual_seed(0))
            loss.backward()
        assert "forward" not in vars(model.blocks[0])  # unwrapped again on exit
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="blocks"):
        with gradient_checkpointing(torch.nn.Linear(2, 2)):
            pass


def test_dataset_batches_are_a_pure_function_of_step():
    data = list(range(7))
    source = DatasetBatches(data)
    stream = [i for step in range(1, 8) for i in source.indices(step, 3, seed=1)]
    for epoch in range(3):  # every epoch is a permutation of the dataset
        assert sorted(stream[7 * epoch:7 * epoch + 7]) == data
    assert DatasetBatches(data).indices(5, 3, seed=1) == source.indices(5, 3, seed=1)
    halves = [source.get_batch(4, 4, r, 2, seed=1) for r in range(2)]
    assert torch.cat(halves).tolist() == source.indices(4, 4, seed=1)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    assert TrainConfig(lr=1.0, warmup_steps=4).lr_at(1) == 0.25
    frozen = tiny_dit().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        train(frozen, loss_fn, fixed_batch(), TrainConfig(steps=1, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="empty"):
        train(tiny_dit(), loss_fn, [], TrainConfig(steps=1, output_dir=str(tmp_path)))


def test_bf16_mixed_precision_keeps_the_dit_islands(tmp_path):
    """'auto' is bf16 only on CUDA; forced bf16 runs the DiT's matmuls in bf16 (its own
    compute_dtype, autocast off inside it) and gives gradients close to fp32."""
    from core.train.loop import _autocast, own_compute_dtype, use_bf16

    cpu = torch.device("cpu")
    assert not use_bf16(TrainConfig(mixed_precision="auto"), cpu)
    assert use_bf16(TrainConfig(mixed_precision="bf16"), cpu)
    batch = DatasetBatches(fixed_batch(n=2)).get_batch(1, 2, 0, 1, 0)
    grads = {}
    for mode in ("no", "bf16"):
        model = tiny_dit()
        with own_compute_dtype(model, torch.bfloat16 if mode == "bf16" else None) as n, \
                _autocast(TrainConfig(mixed_precision=mode), cpu):
            assert n == (1 if mode == "bf16" else 0)
            loss, _ = loss_fn(model, batch, torch.Generator().manual_seed(0))
        loss.backward()
        assert model.compute_dtype == torch.float32 and "forward" not in vars(model)  # restored
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    rel = float((grads["bf16"] - grads["no"]).norm() / grads["no"].norm())
    assert 0 < rel < 0.05, rel
    result = train(tiny_dit(), loss_fn, fixed_batch(), TrainConfig(
        steps=2, batch_size=2, mixed_precision="bf16", gradient_checkpointing=True,
        output_dir=str(tmp_path), progress=False))
    assert result.step == 2 and all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.gpu
def test_cuda_bf16_autocast_with_gradient_checkpointing(tmp_path):
    model, data = tiny_dit(), fixed_batch()
    before = eval_loss(model, data)
    result = train(model, loss_fn, data, TrainConfig(
        steps=60, batch_size=4, lr=1e-2, checkpoint_every=30, output_dir=str(tmp_path),
        progress=False, gradient_checkpointing=True, device="cuda"))
    after = eval_loss(model.cpu(), data)
    assert result.step == 60 and after < 0.85 * before
