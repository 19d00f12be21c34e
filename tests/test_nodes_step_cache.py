"""FlowDiT Step Cache and Load FlowDiT's compile toggle, through the fallback host (no ComfyUI),
on a tiny random model in a model folder."""
import pytest
import torch
from safetensors.torch import save_file
from conftest import use_models_dir


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from core.dit.config import dit_metadata, get_preset
    from core.dit.random_weights import random_state_dict

    root = tmp_path_factory.mktemp("models")
    (root / "diffusion_models").mkdir()
    save_file(random_state_dict(get_preset("tiny-t2v"), seed=1),
              str(root / "diffusion_models" / "t2v.safetensors"), metadata=dit_metadata(get_preset("tiny-t2v")))
    return root


@pytest.fixture()
def nodes(pack, models_dir, monkeypatch):
    use_models_dir(pack, models_dir, monkeypatch)
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


def text(seed, length=7):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, 4096, generator=g), {"pooled_output": None}]]


def run(nodes, model, steps=10, solver="euler"):
    latent = {"samples": torch.zeros(1, 16, 3, 4, 4)}
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(steps, 3.0, 1.0)
    calls = []
    handle = model.module.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        (out,) = nodes["FlowDiTSampler"].sample(model, text(1), text(2, 5), latent, sigmas, solver, 3.0, 7)
    finally:
        handle.remove()
    return out["samples"], len(calls)


def test_node_is_registered(pack):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["FlowDiTStepCache"] == "FlowDiT Step Cache"


def test_step_cache_node_skips_calls_and_leaves_the_input_model_alone(nodes):
    (model,) = nodes["FlowDiTLoader"].load("t2v.safetensors", "default", "sdpa")
    (cached,) = nodes["FlowDiTStepCache"].apply(model, threshold=100.0, start=0.0, end=1.0)
    assert model.step_cache is None and cached.step_cache.threshold == 100.0
    assert cached.hosted is model.hosted  # a copy of the handle, the same weights
    plain, plain_calls = run(nodes, model)
    fast, fast_calls = run(nodes, cached)
    assert fast_calls < plain_calls
    assert torch.isfinite(fast).all()
    again, again_calls = run(nodes, model)  # the input model still runs every step
    assert again_calls == plain_calls and torch.equal(again, plain)


def test_threshold_zero_is_off_and_bit_identical(nodes):
    (model,) = nodes["FlowDiTLoader"].load("t2v.safetensors", "default", "sdpa")
    (off,) = nodes["FlowDiTStepCache"].apply(model, threshold=0.0)
    assert off.step_cache is None
    assert torch.equal(run(nodes, off, steps=4)[0], run(nodes, model, steps=4)[0])


def test_step_cache_validation(pack):
    node = pack.NODE_CLASS_MAPPINGS["FlowDiTStepCache"]
    assert node.VALIDATE_INPUTS(start=0.1, end=0.9) is True
    assert "start" in node.VALIDATE_INPUTS(start=0.8, end=0.2)
    assert node.VALIDATE_INPUTS(start=None, end=0.2) is True  # linked input: unknown yet


def test_loader_compile_toggle(nodes):
    from core.dit.compile import blocks_compiled

    inputs = nodes["FlowDiTLoader"].INPUT_TYPES()
    spec = inputs["optional"]["compile"]
    assert spec[0] == "BOOLEAN" and spec[1]["default"] is False and spec[1]["tooltip"]
    (plain,) = nodes["FlowDiTLoader"].load("t2v.safetensors", "default", "sdpa")
    assert not blocks_compiled(plain.module)
    (compiled,) = nodes["FlowDiTLoader"].load("t2v.safetensors", "default", "sdpa", compile=True)
    assert blocks_compiled(compiled.module)  # compiled lazily: the first forward compiles
