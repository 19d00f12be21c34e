"""`python -m core train --config run.json [--resume]` end to end on a tiny model: a LoRA run from
a folder of GIFs, refusal to overwrite without --resume, resuming to more steps, config errors."""
import json
import re

import numpy as np
import torch
from PIL import Image

from core.cli import main
from core.dit import get_preset
from core.dit.random_weights import random_state_dict
from core.dit.config import dit_metadata
from core.train.checkpointing import load_tensors, save_tensors
from core.vae import PRESETS
from core.vae.model import random_state_dict as vae_weights

torch.set_num_threads(1)
COMFY_KEY = re.compile(r"^diffusion_model\.blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]\.(lora_up\.weight|lora_down\.weight|alpha)$")


def make_run(tmp_path, **overrides):
    data = tmp_path / "clips"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i, caption in enumerate(["red", "blue", "green"]):
        images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(5)]
        images[0].save(data / f"c{i}.gif", save_all=True, append_images=images[1:], duration=60)
        (data / f"c{i}.txt").write_text(caption)
    save_tensors(vae_weights(PRESETS["test-2.1"], seed=0), tmp_path / "vae.safetensors")
    cfg = get_preset("tiny-t2v", text_dim=32, num_layers=1)
    save_tensors(random_state_dict(cfg, seed=0), tmp_path / "dit.safetensors",
                 metadata=dit_metadata(cfg))  # the tiny model's 32-wide heads
    g = torch.Generator().manual_seed(0)
    save_tensors({c: torch.randn(2 + len(c) % 3, 32, generator=g) for c in ["", "red", "blue", "green"]},
                 tmp_path / "embeds.safetensors")
    run = {"data": "clips", "vae": "vae.safetensors", "dit": "dit.safetensors",
           "text_embeddings": "embeds.safetensors", "caption_dropout": 0.2,
           "width": 16, "height": 16, "frames": 5, "lora_rank": 2, "lora_targets":
           ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
            "cross_attn.k", "cross_attn.v", "cross_attn.o"],
           "train": {"steps": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 1,
                     "progress": False, "output_dir": "out", "ema_decay": 0.5}}
    run.update(overrides)
    (tmp_path / "run.json").write_text(json.dumps(run))
    return tmp_path / "run.json"


def test_lora_run_resume_and_refusal(tmp_path, capsys):
    config = make_run(tmp_path)
    assert main(["train", "--config", str(config)]) == 0
    out = tmp_path / "out"
    lora = load_tensors(out / "lora.safetensors")
    assert lora and all(COMFY_KEY.match(k) for k in lora)
    assert (out / "lora_ema.safetensors").is_file() and (out / "loss.png").is_file()
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + 2

    assert main(["train", "--config", str(config)]) == 2  # would overwrite: refused
    assert "--resume" in capsys.readouterr().err

    run = json.loads(config.read_text())
    run["train"]["steps"] = 3
    config.write_text(json.dumps(run))
    assert main(["train", "--config", str(config), "--resume"]) == 0
    rows = (out / "loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_config_errors(tmp_path, capsys):
    config = make_run(tmp_path, lr_typo=1)
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown keys ['lr_typo']" in capsys.readouterr().err
    config = make_run(tmp_path, dit_preset="tiny-t2v")
    assert main(["train", "--config", str(config)]) == 2
    assert "exactly one of 'dit'" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2
