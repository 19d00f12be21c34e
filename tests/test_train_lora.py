"""LoRA: adapters start as the identity, train with the loop while the base stays frozen, change the
output (and not at strength 0), save in ComfyUI's Wan LoRA key layout, and load back (merged or at
run time) to the same velocity. With COMFYUI_PATH set, ComfyUI's own LoRA loader reads the file
and patches a ComfyUI WanModel to the same weights."""
import importlib
import re
import sys

import pytest
import torch

from core.dit import get_preset, load_dit
from core.dit.random_weights import random_state_dict
from core.train import (LoRAConfig, TrainConfig, add_lora, flow_matching_loss, load_lora,
                        lora_state_dict, remove_lora, save_lora, set_lora_strength, train)
from core.train.checkpointing import load_tensors

torch.set_num_threads(1)
CFG = get_preset("tiny-t2v", text_dim=32, num_layers=2)
# ComfyUI's generic Wan LoRA layout: diffusion_model.<module>.{lora_up.weight, lora_down.weight, alpha}
COMFY_KEY = re.compile(r"^diffusion_model\.blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])"
                       r"\.(lora_up\.weight|lora_down\.weight|alpha)$")
TOL = dict(rtol=1e-5, atol=1e-6)


def base_dit():
    return load_dit(random_state_dict(CFG, seed=1), dtype=torch.float32, num_heads=CFG.num_heads)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, 2, 4, 4, generator=g), torch.tensor([300.0, 800.0]),
            torch.randn(2, 3, 32, generator=g))


def velocity(dit):
    with torch.no_grad():
        return dit(*inputs())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DiT with rank-4 adapters trained for 8 steps; its reference outputs; the saved file."""
    out = tmp_path_factory.mktemp("lora")
    dit = base_dit()
    base_out = velocity(dit)
    base_sd = {k: v.clone() for k, v in dit.state_dict().items()}
    params = add_lora(dit, LoRAConfig(rank=4, alpha=2.0), generator=torch.Generator().manual_seed(0))
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in dit.named_parameters() if "lora_" not in n)
    torch.testing.assert_close(velocity(dit), base_out, rtol=0, atol=0)  # up = 0: identity at start

    g = torch.Generator().manual_seed(1)
    data = [{"x0": torch.randn(16, 2, 4, 4, generator=g), "ctx": torch.randn(3, 32, generator=g)}
            for _ in range(4)]

    def loss_fn(model, batch, generator):
        return flow_matching_loss(model, batch["x0"], batch["ctx"], generator=generator)

    result = train(dit, loss_fn, data, TrainConfig(steps=8, batch_size=2, lr=1e-2,
                                                   checkpoint_every=0, progress=False,
                                                   output_dir=str(out / "run")))
    assert all(k.rsplit(".", 2)[-2] in ("lora_up", "lora_down") or k.endswith("alpha")
               for k in result.trainable_keys)  # only the adapters are checkpointed
    for key, value in base_sd.items():  # the base weights did not move
        assert torch.equal(dit.state_dict()[key], value), key
    path = save_lora(dit, out / "tiny_lora.safetensors")
    return dit, base_out, velocity(dit), path


def test_training_changes_the_output_and_strength_zero_does_not(trained):
    dit, base_out, lora_out, _ = trained
    change = float((lora_out - base_out).abs().max())
    print(f"LoRA after 8 steps: max |dv| = {change:.3e}")
    assert change > 1e-3
    set_lora_strength(dit, 0.0)
    torch.testing.assert_close(velocity(dit), base_out, rtol=0, atol=0)
    set_lora_strength(dit, 1.0)
    torch.testing.assert_close(velocity(dit), lora_out, rtol=0, atol=0)


def test_saved_keys_follow_the_comfyui_wan_layout(trained):
    _, _, _, path = trained
    sd = load_tensors(path)
    assert sd and all(COMFY_KEY.match(k) for k in sd), [k for k in sd if not COMFY_KEY.match(k)][:3]
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}
    assert len(modules) == CFG.num_layers * 10  # q, k, v, o twice, ffn.0, ffn.2 per block
    m = "diffusion_model.blocks.1.ffn.0"
    assert sd[f"{m}.lora_up.weight"].shape == (CFG.ffn_dim, 4)
    assert sd[f"{m}.lora_down.weight"].shape == (4, CFG.dim)
    assert sd[f"{m}.alpha"].shape == () and float(sd[f"{m}.alpha"]) == 2.0


@pytest.mark.parametrize("mode", ["merge", "runtime"])
def test_loading_the_file_reproduces_the_adapted_model(trained, mode):
    _, base_out, lora_out, path = trained
    dit = base_dit()
    report = load_lora(dit, path, strength=1.0, mode=mode)
    assert len(report.layers) == CFG.num_layers * 10 and report.rank == 4 and not report.ignored
    torch.testing.assert_close(velocity(dit), lora_out, **TOL)
    half = base_dit()
    load_lora(half, path, strength=0.5, mode=mode)
    mid = velocity(half)
    assert float((mid - base_out).abs().max()) > 1e-4 and float((mid - lora_out).abs().max()) > 1e-4
    zero = base_dit()
    load_lora(zero, path, strength=0.0, mode=mode)
    torch.testing.assert_close(velocity(zero), base_out, rtol=0, atol=0)
    if mode == "runtime":
        remove_lora(dit)
        torch.testing.assert_close(velocity(dit), base_out, rtol=0, atol=0)


def test_runtime_loras_stack(trained):
    _, base_out, lora_out, path = trained
    dit = base_dit()
    load_lora(dit, path, strength=0.5, mode="runtime")
    load_lora(dit, path, strength=0.5, mode="runtime")  # a second LoRA on the same layers adds up
    torch.testing.assert_close(velocity(dit), lora_out, **TOL)
    remove_lora(dit)
    torch.testing.assert_close(velocity(dit), base_out, rtol=0, atol=0)


def test_other_key_layouts_load_the_same(trained):
    dit, _, lora_out, _ = trained
    ours = lora_state_dict(dit)
    peft = {}
    kohya = {}
    for key, value in ours.items():
        stem = key.removeprefix("diffusion_model.")
        for sfx, a, b in ((".lora_up.weight", ".lora_B.weight", "lora_up.weight"),
                          (".lora_down.weight", ".lora_A.weight", "lora_down.weight"),
                          (".alpha", ".alpha", "alpha")):
            if stem.endswith(sfx):
                module = stem[:-len(sfx)]
                peft[f"transformer.{module}{a}"] = value
                kohya[f"lora_unet_{module.replace('.', '_')}.{b}"] = value
    for sd in (peft, kohya):
        fresh = base_dit()
        load_lora(fresh, sd)
        torch.testing.assert_close(velocity(fresh), lora_out, **TOL)


def test_wrong_loras_are_refused(trained):
    _, _, _, path = trained
    with pytest.raises(ValueError, match="another model family"):
        load_lora(base_dit(), {"unet.down.0.lora_up.weight": torch.zeros(2, 2),
                               "unet.down.0.lora_down.weight": torch.zeros(2, 2)})
    wide_cfg = get_preset("tiny-t2v", text_dim=32, dim=96, num_heads=3)
    wide = load_dit(random_state_dict(wide_cfg, seed=0), dtype=torch.float32, num_heads=3)
    with pytest.raises(ValueError, match="another size"):
        load_lora(wide, path)
    with pytest.raises(ValueError, match="mode"):
        load_lora(base_dit(), path, mode="add")
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)


@pytest.mark.comfyui
def test_comfyui_loads_it_onto_its_wan_model(trained, comfyui_path):
    """ComfyUI's key map + load_lora + ModelPatcher give the same merged weights as ours."""
    if str(comfyui_path) not in sys.path:
        sys.path.append(str(comfyui_path))
    try:
        cli_args = importlib.import_module("comfy.cli_args")
        cli_args.args.cpu = True
        importlib.import_module("comfy.model_management")
        supported = importlib.import_module("comfy.supported_models")
        comfy_lora = importlib.import_module("comfy.lora")
        patcher_mod = importlib.import_module("comfy.model_patcher")
    except ImportError as err:
        pytest.skip(f"ComfyUI at {comfyui_path} does not import here ({err}); use its Python")
    _, _, _, path = trained
    unet_config = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": CFG.patch_size,
                   "in_dim": CFG.in_dim, "out_dim": CFG.out_dim, "dim": CFG.dim,
                   "ffn_dim": CFG.ffn_dim, "freq_dim": CFG.freq_dim, "text_dim": CFG.text_dim,
                   "num_heads": CFG.num_heads, "num_layers": CFG.num_layers, "eps": CFG.eps,
                   "qk_norm": True, "cross_attn_norm": True, "window_size": (-1, -1)}
    model_config = supported.WAN21_T2V(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    model.diffusion_model.load_state_dict(random_state_dict(CFG, seed=1), strict=True)

    key_map = comfy_lora.model_lora_keys_unet(model, {})
    patches = comfy_lora.load_lora(load_tensors(path), key_map, log_missing=True)
    assert len(patches) == CFG.num_layers * 10
    assert all(k.startswith("diffusion_model.blocks.") and k.endswith(".weight") for k in patches)
    patcher = patcher_mod.ModelPatcher(model, load_device=torch.device("cpu"),
                                       offload_device=torch.device("cpu"))
    patcher.add_patches(patches, 0.7)
    patcher.patch_model()
    comfy_sd = {k.removeprefix("diffusion_model."): v
                for k, v in model.state_dict().items() if k.startswith("diffusion_model.")}
    ours = base_dit()
    load_lora(ours, path, strength=0.7, mode="merge")
    changed = 0
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(comfy_sd[key].float(), value.float(), **TOL, msg=key)
        changed += not torch.equal(value, random_state_dict(CFG, seed=1)[key])
    assert changed == CFG.num_layers * 10
