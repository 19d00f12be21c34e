"""The fault catalogue (issues 14 and 16): what a hostile or unlucky user can do, and what they
must get back — a clear message naming the problem (the table below: case -> the text it must
contain), and nothing already written lost. Cases against a real ComfyUI server live in
test_fault_catalogue_server.py.

Cases that need a fix in a file owned elsewhere are marked xfail(strict=True) with the file named,
so they turn into failures (and get unmarked) the moment they are fixed.
"""
from __future__ import annotations

import errno
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import core.train.checkpointing as checkpointing
from core.dit import WanDiT, get_preset, load_dit
from core.dit.config import dit_metadata
from core.dit.random_weights import random_state_dict as dit_weights
from core.train import DataConfig, TrainConfig, cache_latents, train
from core.train.checkpointing import (CheckpointWriteError, latest_checkpoint, read_checkpoint,
                                      save_tensors)
from core.vae import PRESETS as VAE_PRESETS
from core.vae import build_vae, load_vae
from core.vae.model import random_state_dict as vae_weights
from conftest import use_models_dir

torch.set_num_threads(1)

TINY_DIT = get_preset("tiny-t2v", text_dim=32, num_layers=2)


# ------------------------------------------------------------------------------ checkpoints

class _Payload:
    """Unpickling this would call open(marker, 'w'), creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _good_dit(path: Path) -> Path:
    save_file(dit_weights(TINY_DIT, seed=0), str(path), metadata=dit_metadata(TINY_DIT))
    return path


def _zero_bytes(tmp, suffix):
    path = tmp / f"model{suffix}"
    path.write_bytes(b"")
    return path


def _truncated(tmp, suffix=".safetensors"):
    good = _good_dit(tmp / "good.safetensors")
    if suffix != ".safetensors":
        good = tmp / "good.pth"
        torch.save(dit_weights(TINY_DIT, seed=0), str(good))
    data = good.read_bytes()
    path = tmp / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_renamed(tmp):
    path = tmp / "notes.safetensors"
    path.write_text("these are my notes, not a model\n" * 20)
    return path


def _foreign_keys(tmp):
    path = tmp / "foreign.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4), "decoder.out.bias": torch.zeros(4)},
              str(path))
    return path


def _vae_as_dit(tmp):
    path = tmp / "vae_in_dit_folder.safetensors"
    save_file(vae_weights(VAE_PRESETS["test-2.1"], seed=0), str(path))
    return path


def _one_wrong_shape(tmp):
    sd = dit_weights(TINY_DIT, seed=0)
    sd["blocks.1.ffn.2.weight"] = torch.zeros(64, 100)
    path = tmp / "wrong_shape.safetensors"
    save_file(sd, str(path), metadata=dit_metadata(TINY_DIT))
    return path


def _nan_dit(tmp):
    sd = dit_weights(TINY_DIT, seed=0)
    sd["blocks.0.self_attn.q.weight"][0, 0] = float("nan")
    path = tmp / "nan.safetensors"
    save_file(sd, str(path), metadata=dit_metadata(TINY_DIT))
    return path


# case id -> (make the file, loader, the message it must contain)
CHECKPOINT_CASES = [
    pytest.param(lambda t: _zero_bytes(t, ".safetensors"), load_dit,
                 "not a readable safetensors file", id="zero-byte-safetensors"),
    pytest.param(lambda t: _zero_bytes(t, ".pth"), load_dit,
                 "not a readable PyTorch checkpoint", id="zero-byte-pth"),
    pytest.param(lambda t: _zero_bytes(t, ".safetensors"), load_vae,
                 "not a readable safetensors file", id="zero-byte-vae"),
    pytest.param(_truncated, load_dit, "download it again", id="truncated-safetensors"),
    pytest.param(lambda t: _truncated(t, ".pth"), load_dit, "not a readable PyTorch checkpoint",
                 id="truncated-pth"),
    pytest.param(_text_renamed, load_dit, "not a readable safetensors file",
                 id="text-renamed-safetensors"),
    pytest.param(_foreign_keys, load_dit, "not a Wan DiT", id="foreign-keys-dit"),
    pytest.param(_foreign_keys, load_vae, "not a Wan VAE checkpoint", id="foreign-keys-vae"),
    pytest.param(_vae_as_dit, load_dit, "not a Wan DiT", id="vae-loaded-as-dit"),
    pytest.param(_one_wrong_shape, load_dit, "blocks.1.ffn.2.weight", id="one-wrong-shape"),
    pytest.param(_nan_dit, load_dit, "blocks.0.self_attn.q.weight", id="nan-weights-dit"),
]


@pytest.mark.parametrize("make, loader, message", CHECKPOINT_CASES)
def test_bad_checkpoint_is_refused_with_a_message(tmp_path, make, loader, message):
    path = make(tmp_path)
    before = path.read_bytes()
    with pytest.raises((ValueError, TypeError)) as err:
        loader(path)
    assert message in str(err.value), str(err.value)
    assert path.read_bytes() == before  # the file itself is never touched


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, suffix):
    marker = tmp_path / "payload_ran.txt"
    sd = dit_weights(TINY_DIT, seed=0)
    sd["evil"] = _Payload(marker)
    path = tmp_path / f"model{suffix}"
    torch.save(sd, str(path))
    assert not marker.exists()
    for loader in (load_dit, load_vae):
        with pytest.raises(ValueError, match="refused to load"):
            loader(path)
    assert not marker.exists()


def test_nan_vae_weights_are_refused_at_load_naming_the_tensor():
    cfg = VAE_PRESETS["test-2.1"]
    sd = vae_weights(cfg, seed=0)
    name = next(k for k in sd if k.endswith(".weight") and sd[k].ndim > 1)
    sd[name].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN") as err:
        build_vae(cfg, sd)
    assert name in str(err.value)


def test_vae_that_decodes_to_non_finite_values_is_an_error_not_a_black_video():
    """A VAE whose weights overflow only in use (finite at load) must not return a clamped,
    all-black 'success'."""
    cfg = VAE_PRESETS["test-2.1"]
    vae = build_vae(cfg, vae_weights(cfg, seed=0))
    with torch.no_grad():
        vae.model.conv2.weight.fill_(3e38)  # finite, overflows to inf in the first conv
    with pytest.raises(ValueError, match="NaN or infinite"):
        vae.decode(torch.randn(1, cfg.z_dim, 1, 4, 4))


# --------------------------------------------------------------------- file names in nodes

LOADER_INPUTS = [("FlowDiTLoader", "model_name", "diffusion_models"),
                 ("FlowDiTVAELoader", "vae_name", "vae"),
                 ("FlowDiTLoraLoader", "lora_name", "loras"),
                 ("FlowDiTTextEncoderLoader", "text_encoder_name", "text_encoders")]
BAD_NAMES = ["../../etc/passwd", "/etc/passwd", "..\\..\\secret.safetensors",
             "sub/../../escape.safetensors"]


@pytest.fixture()
def models_dir(pack, tmp_path, monkeypatch):
    root = tmp_path / "models"
    for folder in ("diffusion_models", "vae", "loras", "text_encoders"):
        (root / folder).mkdir(parents=True)
    use_models_dir(pack, root, monkeypatch)
    monkeypatch.setenv("FLOWDIT_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("FLOWDIT_INPUT_DIR", str(tmp_path / "input"))
    return root


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("node, input_name, folder", LOADER_INPUTS, ids=[n for n, _, _ in LOADER_INPUTS])
def test_dotdot_and_absolute_model_names_are_refused(pack, models_dir, node, input_name, folder, bad):
    cls = pack.NODE_CLASS_MAPPINGS[node]
    verdict = cls.VALIDATE_INPUTS(**{input_name: bad})
    assert isinstance(verdict, str) and "no '..'" in verdict, verdict
    with pytest.raises(ValueError, match="no absolute paths, no '..'"):
        pack.nodes.host.model_path(folder, bad)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_dotdot_and_absolute_names_in_load_and_save_video(pack, models_dir, bad):
    with pytest.raises(ValueError, match="no '..'"):
        pack.NODE_CLASS_MAPPINGS["FlowDiTLoadVideo"]().load(bad, 64, 64, 5)
    with pytest.raises(ValueError, match="no '..'"):
        pack.NODE_CLASS_MAPPINGS["FlowDiTSaveVideo"]().save(torch.zeros(1, 16, 16, 3),
                                                             filename_prefix=bad)
    assert not (models_dir.parent / "output").exists() or not any(
        (models_dir.parent / "output").rglob("*.mp4"))


def test_symlink_in_a_models_folder_is_followed_like_comfyui(pack, models_dir, tmp_path):
    """ComfyUI's rule (folder_paths: os.walk(followlinks=True), get_full_path joins the name to
    the folder): a link placed in a model folder is the user's own arrangement and is followed,
    wherever it points; only names typed into a node are kept inside the folder. A link that
    points nowhere is named as such."""
    host = pack.nodes.host
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _good_dit(outside / "real.safetensors")
    (models_dir / "diffusion_models" / "linked.safetensors").symlink_to(outside / "real.safetensors")
    (models_dir / "diffusion_models" / "linked_dir").symlink_to(outside, target_is_directory=True)
    names = host.model_names("diffusion_models")
    assert "linked.safetensors" in names and "linked_dir/real.safetensors" in names
    assert pack.NODE_CLASS_MAPPINGS["FlowDiTLoader"].VALIDATE_INPUTS(model_name="linked.safetensors") is True
    assert host.model_path("diffusion_models", "linked.safetensors").is_file()
    (model,) = pack.NODE_CLASS_MAPPINGS["FlowDiTLoader"]().load("linked_dir/real.safetensors")
    assert model.config.dim == TINY_DIT.dim
    (models_dir / "diffusion_models" / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        host.model_path("diffusion_models", "dangling.safetensors")


# ---------------------------------------------------------------------------------- inputs

def _validate(pack, node, **inputs):
    return pack.NODE_CLASS_MAPPINGS[node].VALIDATE_INPUTS(**inputs)


SIZE_NODES = ["FlowDiTEmptyVideoLatent", "FlowDiTTI2VFirstFrame", "FlowDiTI2VConditioning",
              "FlowDiTLoadVideo"]

# case id -> (VALIDATE_INPUTS values, the message it must contain)
VALIDATION_CASES = [
    pytest.param({"length": 80}, "4n+1", id="length-80"),
    pytest.param({"length": 0}, "between 1 and", id="length-0"),
    pytest.param({"width": 100}, "multiple of 16", id="width-100"),
    pytest.param({"height": 8}, "between 16 and", id="height-8"),
    pytest.param({"width": "wide"}, "whole number", id="width-a-string"),
    pytest.param({"length": "81"}, "whole number", id="length-a-numeric-string"),
    pytest.param({"width": 512.5}, "whole number", id="width-fractional"),
    pytest.param({"width": None, "height": [1, 0]}, "whole number", id="height-a-list"),
    pytest.param({"width": 8192, "height": 8192, "length": 1001}, "the largest that fits",
                 id="8192x8192x1001"),
]


@pytest.mark.parametrize("node", SIZE_NODES)
@pytest.mark.parametrize("inputs, message", VALIDATION_CASES)
def test_size_validation_from_the_api(pack, node, inputs, message):
    """VALIDATE_INPUTS gets whatever POST /prompt carried (ComfyUI passes a value it failed to
    convert on to it): a reason string, never an exception."""
    verdict = _validate(pack, node, **inputs)
    assert isinstance(verdict, str) and message in verdict, verdict


@pytest.mark.parametrize("node", SIZE_NODES)
def test_sizes_that_fit_pass_validation(pack, node):
    assert _validate(pack, node, width=832, height=480, length=81) is True
    assert _validate(pack, node, width=None, height=None, length=None) is True  # linked inputs


def test_batch_size_is_checked_where_validation_names_it(pack):
    verdict = _validate(pack, "FlowDiTEmptyVideoLatent", width=64, height=64, length=5, batch_size=0)
    assert isinstance(verdict, str) and "batch_size" in verdict


def test_too_large_request_is_refused_at_run_time_before_allocating(pack, models_dir, monkeypatch):
    """At run time the node knows the VAE: the estimate uses its sizes, and nothing is allocated."""
    save_file(vae_weights(VAE_PRESETS["test-2.1"], seed=0), str(models_dir / "vae" / "v.safetensors"))
    (vae,) = pack.NODE_CLASS_MAPPINGS["FlowDiTVAELoader"]().load("v.safetensors")
    allocated = []
    real_zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: allocated.append(a) or real_zeros(*a, **k))
    with pytest.raises(ValueError) as err:
        pack.NODE_CLASS_MAPPINGS["FlowDiTEmptyVideoLatent"]().generate(vae, 8192, 8192, 1001, 1)
    monkeypatch.setattr(torch, "zeros", real_zeros)
    assert "8192x8192x1001" in str(err.value) and "largest that fits" in str(err.value)
    assert not allocated


def _sample(model_cfg=TINY_DIT, latent=None, **request):
    from core.pipeline import SampleRequest, sample_video

    dit = WanDiT(model_cfg)
    latent = torch.zeros(1, model_cfg.out_dim, 2, 4, 4) if latent is None else latent
    ctx = torch.randn(1, 3, model_cfg.text_dim)
    fields = dict(latent=latent, sigmas=torch.tensor([1.0, 0.5, 0.0]), context=ctx,
                  negative_context=ctx, cfg=2.0, solver="euler")
    fields.update(request)
    return sample_video(dit, SampleRequest(**fields), device=torch.device("cpu"))


def _vae(name="test-2.1"):
    cfg = VAE_PRESETS[name]
    return build_vae(cfg, vae_weights(cfg, seed=0))


def _flow_sigmas(**kw):
    from core.flow.schedules import flow_sigmas

    return flow_sigmas(**kw)


def _check_steps(n):
    from core.memory import check_steps

    return check_steps(n)


def _generate_options(**kw):
    from core.generate import GenerateOptions

    return GenerateOptions(prompt="a red circle moving right on a black background", **kw)


NAN_LATENT = torch.full((1, 16, 2, 4, 4), float("nan"))
INF_LATENT = torch.zeros(1, 16, 2, 4, 4).index_fill_(2, torch.tensor([1]), float("inf"))

# case id -> (call, the message it must contain)
INPUT_CASES = [
    pytest.param(lambda: DataConfig(frames=8), "4n+1", id="train-frames-8"),
    pytest.param(lambda: _vae().encode(torch.zeros(1, 3, 8, 16, 16)), "4n+1", id="vae-encode-8-frames"),
    pytest.param(lambda: _generate_options(frames=8), "4n + 1", id="generate-frames-8"),
    pytest.param(lambda: _vae().encode(torch.zeros(1, 3, 5, 20, 20)), "multiples of 8",
                 id="vae-encode-20x20"),
    pytest.param(lambda: _sample(latent=torch.zeros(1, 16, 2, 3, 4)), "not divisible by the patch",
                 id="latent-not-a-patch-multiple"),
    pytest.param(lambda: _sample(get_preset("tiny-ti2v", text_dim=32),
                                 latent=torch.zeros(1, 16, 2, 4, 4)), "channels",
                 id="16ch-latent-to-48ch-model"),
    pytest.param(lambda: _vae("test-2.2").decode(torch.zeros(1, 16, 2, 4, 4)), "channels",
                 id="16ch-latent-to-48ch-vae"),
    pytest.param(lambda: _vae().decode(torch.zeros(1, 48, 2, 4, 4)), "channels",
                 id="48ch-latent-to-16ch-vae"),
    pytest.param(lambda: _vae().decode(NAN_LATENT), "NaN", id="nan-latent-decode"),
    pytest.param(lambda: _vae().decode_raw(INF_LATENT), "NaN or infinite", id="inf-latent-decode"),
    pytest.param(lambda: _sample(latent=NAN_LATENT), "NaN", id="nan-latent-sample"),
    pytest.param(lambda: _sample(latent=INF_LATENT, sigmas=torch.tensor([0.5, 0.0])), "infinite",
                 id="inf-latent-video-to-video"),
    pytest.param(lambda: _sample(context=torch.randn(1, 3, 10), negative_context=torch.randn(1, 3, 10)),
                 "context must be text embeddings", id="wrong-context-width"),
    pytest.param(lambda: _flow_sigmas(steps=0), "steps must be an integer >= 1", id="steps-0"),
    pytest.param(lambda: _check_steps(10 ** 9), "between 1 and", id="steps-a-billion"),
    pytest.param(lambda: _sample(sigmas=torch.linspace(1, 0, 10_002)), "more than the",
                 id="sigmas-over-max-steps"),
    pytest.param(lambda: _flow_sigmas(steps=4, denoise=0.0), "denoise must be in (0, 1]",
                 id="denoise-0"),
    pytest.param(lambda: _flow_sigmas(steps=4, shift=-2.0), "shift", id="negative-shift"),
    pytest.param(lambda: _sample(cfg=float("nan")), "cfg must be a finite number > 0", id="cfg-nan"),
    pytest.param(lambda: _sample(cfg=float("inf")), "cfg must be a finite number > 0", id="cfg-inf"),
    pytest.param(lambda: _sample(cfg=-3.0), "cfg must be a finite number > 0", id="negative-cfg"),
    pytest.param(lambda: _sample(cfg=0.0), "cfg must be a finite number > 0", id="cfg-0"),
    pytest.param(lambda: _sample(latent=torch.zeros(1, 16, 1000, 1000, 1000, device="meta")),
                 "needs about", id="latent-too-large-to-sample"),
]


@pytest.mark.parametrize("call, message", INPUT_CASES)
def test_bad_input_is_refused_with_a_message(call, message):
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    assert message in str(err.value), str(err.value)


def test_latent_too_large_is_refused_before_any_forward(monkeypatch):
    """The sampling guard runs before the first model call (a meta tensor stands for the huge
    latent, so the test itself allocates nothing)."""
    calls = []
    monkeypatch.setattr(WanDiT, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="needs about"):
        _sample(latent=torch.zeros(1, 16, 1000, 1000, 1000, device="meta"))
    assert not calls


# ------------------------------------------------------------------------ cancel mid-forward

class Cancelled(Exception):
    pass


def test_cancel_inside_the_forward_stops_before_the_next_block():
    cfg = get_preset("tiny-t2v", text_dim=32, num_layers=4)
    dit = WanDiT(cfg)
    ran = []
    for i, block in enumerate(dit.blocks):
        block.register_forward_hook(lambda m, a, out, i=i: ran.append(i))
    checks = []

    def cancel():
        checks.append(len(ran))
        if len(ran) == 2:  # the user pressed cancel while block 1 ran
            raise Cancelled()

    x, ctx = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 3, 32)
    with pytest.raises(Cancelled):
        dit(x, torch.tensor([500.0]), ctx, cancel=cancel)
    assert ran == [0, 1]            # block 2 never started
    assert checks == [0, 1, 2]      # checked before every block, not once per step
    # Without a cancel hook the same forward runs to the end.
    assert dit(x, torch.tensor([500.0]), ctx).shape == x.shape


def test_sample_video_passes_the_cancel_hook_into_every_forward():
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        _sample_with_cancel(cancel)
    assert len(calls) == 3  # stopped inside the first forward (2 blocks + head = 3 checks)


def _sample_with_cancel(cancel):
    from core.pipeline import SampleRequest, sample_video

    dit = WanDiT(TINY_DIT)
    ctx = torch.randn(1, 3, TINY_DIT.text_dim)
    request = SampleRequest(latent=torch.zeros(1, 16, 2, 4, 4), sigmas=torch.tensor([1.0, 0.5, 0.0]),
                            context=ctx, cfg=1.0, solver="euler")
    return sample_video(dit, request, device=torch.device("cpu"), cancel=cancel)


def test_the_sampler_nodes_interrupt_reaches_inside_the_forward(pack, models_dir, monkeypatch):
    save_file(dit_weights(get_preset("tiny-t2v"), seed=0),
              str(models_dir / "diffusion_models" / "t.safetensors"),
              metadata=dit_metadata(get_preset("tiny-t2v")))
    (model,) = pack.NODE_CLASS_MAPPINGS["FlowDiTLoader"]().load("t.safetensors")
    blocks_run = []
    for block in model.module.blocks:
        block.register_forward_hook(lambda *a: blocks_run.append(1))

    def interrupt():
        if blocks_run:  # cancel pressed after the first block of the first step
            raise Cancelled()

    monkeypatch.setattr(pack.nodes.host, "check_interrupt", interrupt)
    g = torch.Generator().manual_seed(0)
    cond = [[torch.randn(1, 5, 4096, generator=g), {}]]
    with pytest.raises(Cancelled):
        pack.NODE_CLASS_MAPPINGS["FlowDiTSampler"]().sample(
            model, cond, cond, {"samples": torch.zeros(1, 16, 2, 4, 4)},
            torch.tensor([1.0, 0.5, 0.0]), "euler", 1.0, 0)
    assert len(blocks_run) == 1


# -------------------------------------------------------------------------------- training

def _clips(root: Path, n=3, frames=5, size=16):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
                  for _ in range(frames)]
        images[0].save(root / f"c{i}.gif", save_all=True, append_images=images[1:], duration=60)
        (root / f"c{i}.txt").write_text(f"clip {i}")
    return root


def _run_config(tmp: Path, **overrides) -> Path:
    _clips(tmp / "clips")
    save_tensors(vae_weights(VAE_PRESETS["test-2.1"], seed=0), tmp / "vae.safetensors")
    run = {"data": "clips", "vae": "vae.safetensors", "dit_preset": "tiny-t2v",
           "width": 16, "height": 16, "frames": 5, "lora_rank": 2,
           "train": {"steps": 2, "batch_size": 1, "lr": 1e-3, "checkpoint_every": 1,
                     "progress": False, "output_dir": "out"}}
    for key, value in overrides.items():
        if key.startswith("train."):
            run["train"][key[len("train."):]] = value
        elif value is None:
            run.pop(key, None)
        else:
            run[key] = value
    (tmp / "run.json").write_text(json.dumps(run))
    return tmp / "run.json"


# case id -> (config overrides, the message it must contain)
CONFIG_CASES = [
    pytest.param({"data": None}, "'data' is required", id="missing-data"),
    pytest.param({"vae": None}, "'vae' is required", id="missing-vae"),
    pytest.param({"dit_preset": None}, "exactly one of 'dit'", id="missing-dit"),
    pytest.param({"lora_rnak": 4}, "did you mean 'lora_rank'", id="unknown-top-level-key"),
    pytest.param({"train.lerning_rate": 1e-3}, "unknown key 'lerning_rate'", id="unknown-train-key"),
    pytest.param({"train.lr": "1e-3"}, "train.lr must be a number", id="lr-a-string"),
    pytest.param({"lora_rank": "two"}, "'lora_rank' must be a whole number", id="lora-rank-two"),
    pytest.param({"width": 16.5}, "'width' must be a whole number", id="width-fractional"),
    pytest.param({"train.steps": "10"}, "train.steps must be a whole number", id="steps-a-string"),
    pytest.param({"train.progress": "no"}, "train.progress must be true or false", id="bool-a-string"),
    pytest.param({"train.betas": 0.9}, "train.betas must be two numbers", id="betas-a-number"),
    pytest.param({"train": [1, 2]}, "'train' must be an object", id="train-a-list"),
    pytest.param({"train.device": "tpu"}, "train.device 'tpu'", id="device-tpu"),
    pytest.param({"frames": 8}, "4n+1", id="frames-8"),
    pytest.param({"data": "no_such_folder"}, "data folder not found", id="missing-data-folder"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES)
def test_bad_train_config_is_one_clear_line(tmp_path, capsys, overrides, message):
    from core.cli import main

    config = _run_config(tmp_path, **overrides)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before anything was written


def test_output_dir_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    from core.cli import main

    config = _run_config(tmp_path, **{"train.output_dir": "results.txt"})
    (tmp_path / "results.txt").write_text("my notes")
    assert main(["train", "--config", str(config)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "results.txt").read_text() == "my notes"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(torch.nn.Linear(2, 2), lambda m, b, g: (m(b).sum(), {}), [torch.zeros(2)],
              TrainConfig(steps=1, output_dir=str(tmp_path / "results.txt"), progress=False))


def _data_vae():
    cfg = VAE_PRESETS["test-2.1"]
    return build_vae(cfg, vae_weights(cfg, seed=0))


# case id -> (spoil the clip folder, the reason the skipped clip must carry)
CLIP_CASES = [
    pytest.param(lambda d: (d / "c0.gif").write_bytes(b"GIF89a broken"), "c0.gif", id="corrupt-clip"),
    pytest.param(lambda d: _clips(d, n=1, frames=2), "needs at least 5", id="clip-too-short"),
    pytest.param(lambda d: (d / "c0.txt").unlink(), "no caption", id="missing-caption"),
    pytest.param(lambda d: (d / "c0.txt").write_bytes(b"caf\xe9 \xff\xfe"), "not UTF-8",
                 id="caption-not-utf8"),
    pytest.param(lambda d: (d / "captions.jsonl").write_bytes(b'{"file": "x.gif", "caption": "\xff"}\n'),
                 "not UTF-8", id="jsonl-line-not-utf8"),
]


@pytest.mark.parametrize("spoil, reason", CLIP_CASES)
def test_a_bad_clip_is_skipped_with_its_reason(tmp_path, spoil, reason):
    data = _clips(tmp_path / "clips")
    spoil(data)
    dataset = cache_latents(data, _data_vae(), tmp_path / "cache", DataConfig(16, 16, 5))
    assert len(dataset) >= 2  # the good clips are still there
    assert any(reason in f"{s.path} {s.reason}" for s in dataset.skipped), dataset.report()


def test_corrupt_cached_latent_names_the_file_to_delete(tmp_path):
    data = _clips(tmp_path / "clips")
    vae = _data_vae()
    dataset = cache_latents(data, vae, tmp_path / "cache", DataConfig(16, 16, 5))
    file = dataset.entries[0][0]
    file.write_bytes(file.read_bytes()[:40])
    with pytest.raises(ValueError, match="delete this cache file") as err:
        dataset[0]
    assert str(file) in str(err.value) and "earlier checkpoint" not in str(err.value)
    # The next run re-encodes the damaged file rather than failing on it.
    again = cache_latents(data, vae, tmp_path / "cache", DataConfig(16, 16, 5))
    assert again[0]["latent"].shape == dataset[1]["latent"].shape


def _tiny_train_config(out, **kw):
    return TrainConfig(**{"steps": 4, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2,
                          "log_every": 1, "progress": False, "output_dir": str(out), **kw})


def _train_tiny(out, **kw):
    from train_kill_child import Batches, loss_fn, model

    return train(model(), loss_fn, Batches(), _tiny_train_config(out, **kw))


def test_damaged_state_never_suggests_weights_only_false(tmp_path):
    _train_tiny(tmp_path, steps=2)
    state = latest_checkpoint(tmp_path / "checkpoints") / "state.pt"
    state.write_bytes(b"PK\x03\x04 not really a zip" + os.urandom(64))
    with pytest.raises(ValueError) as err:
        _train_tiny(tmp_path, steps=4)
    text = str(err.value)
    assert "state.pt" in text and "earlier step-*" in text
    assert "weights_only" not in text and "weights_only" not in repr(err.value.__cause__ or "")


def test_truncated_loss_csv_row_does_not_block_resume(tmp_path):
    _train_tiny(tmp_path, steps=2)
    csv_path = tmp_path / "loss.csv"
    with open(csv_path, "a") as f:  # an older writer died mid-row
        f.write("3,0.12")
    result = _train_tiny(tmp_path, steps=4)
    assert result.resumed_from == 2 and result.step == 4
    steps = [line.split(",")[0] for line in csv_path.read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


def test_orphan_partial_folders_are_removed_on_the_next_run(tmp_path):
    _train_tiny(tmp_path, steps=2)
    root = tmp_path / "checkpoints"
    dead_pid = 2 ** 22 + 12345  # above Linux's pid_max default: no such process
    orphan = root / f".partial-step-0000004-{dead_pid}"
    orphan.mkdir()
    (orphan / "trainable.safetensors").write_bytes(os.urandom(1024))
    stray = tmp_path / f".partial-loss.csv-{dead_pid}"
    stray.write_text("step,loss\n")
    _train_tiny(tmp_path, steps=4)
    assert not orphan.exists() and not stray.exists()


def test_full_disk_during_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    """ENOSPC from the weights writer at the second checkpoint (a monkeypatched write: a real
    small tmpfs needs privileges a test cannot assume)."""
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def full_disk(tensors, path, *args, **kwargs):
        calls.append(path)
        if "step-0000004" in str(path):
            Path(path).write_bytes(b"\0" * 100)  # what made it to disk before it filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CheckpointWriteError) as err:
        _train_tiny(tmp_path)
    text = str(err.value)
    assert "No space left" in text and "step-0000002 is kept" in text and "--resume" in text
    assert isinstance(err.value, ValueError)  # the CLI reports it in one line
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(root).name == "step-0000002"
    _, _, state = read_checkpoint(latest_checkpoint(root))
    assert state["step"] == 2
    assert not [p for p in root.iterdir() if p.name.startswith(".partial")]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert _train_tiny(tmp_path).resumed_from == 2


def _progress(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.is_file() else []


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_loses_more_than_an_interval(tmp_path):
    """At least 10 SIGKILLs at seeded random points of the checkpoint and log writers (half of
    them leaving a torn file behind): after each, `latest` names a complete, loadable checkpoint,
    the next --resume starts right after it, at most one checkpoint interval of progress is lost;
    in the end the weights equal an uninterrupted run's and the loss log has every step once."""
    import multiprocessing

    import train_kill_child as child

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "core.train", "train_kill_child"])
    out, progress = tmp_path / "run", tmp_path / "progress.txt"
    root = out / "checkpoints"
    rng = random.Random(20261202)
    kills = runs = 0
    while True:
        runs += 1
        assert runs <= 40, "the run never finished"
        done = len(_progress(progress))
        before = latest_checkpoint(root)
        before_step = read_checkpoint(before)[2]["step"] if before else 0
        # ~10 instrumented calls per step: a kill lands within the next ~3 steps, so the run
        # cannot finish before the 10th kill.
        kill_at = rng.randint(1, 30) if kills < 12 else 0
        p = ctx.Process(target=child.run, args=(str(out), str(progress), kill_at, rng.random() < 0.5))
        p.start()
        p.join(180)
        assert p.exitcode is not None, "the training child hung"
        steps = _progress(progress)[done:]
        if steps:  # resumed right after the last complete checkpoint
            assert steps[0] == before_step + 1, (steps, before_step)
        latest = latest_checkpoint(root)  # never a pointer to a half checkpoint
        after_step = 0
        if latest is not None:
            weights, ema, state = read_checkpoint(latest)
            after_step = state["step"]
            assert latest.name == f"step-{after_step:07d}" and weights and ema
        if p.exitcode == 0:
            assert after_step == child.STEPS
            break
        assert p.exitcode == -9, p.exitcode
        kills += 1
        reached = max(steps, default=before_step)
        assert reached - after_step <= child.CHECKPOINT_EVERY, (reached, after_step)
    assert kills >= 10
    # Every step logged once, in order, and nothing half-written left behind.
    csv_steps = [int(line.split(",")[0]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    assert csv_steps == list(range(1, child.STEPS + 1))
    assert not [p for p in list(root.iterdir()) + list(out.iterdir()) if p.name.startswith(".partial")]
    # The same run without interruptions, in this process: resuming is exact. Compared with a
    # tolerance because the two runs happen in different processes (same thread count, same ops:
    # expected bit-equal, 1e-6 allows for a different SIMD path on memory-mapped weights).
    ref = train(child.model(), child.loss_fn, child.Batches(), child.config(str(tmp_path / "ref")))
    got = checkpointing.load_tensors(out / "trained.safetensors")
    want = checkpointing.load_tensors(ref.weights)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)
    assert math.isfinite(ref.loss)
