"""Regional torch.compile of the DiT (core/dit/compile.py): no graph breaks inside a block, one
graph for all layers, and no recompilation across timesteps, CFG passes or LoRA strengths; a new
size recompiles once. Dynamo's tracing and guards are the same for every backend, so these tests
use the cheap "eager"/"aot_eager" backends (inductor's speed: tests/benchmarks/bench_compile.py)."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch.testing import assert_close

from core.dit.compile import blocks_compiled, compile_blocks, is_compiled
from core.dit.config import get_preset
from core.dit.model import WanDiT
from core.dit.random_weights import random_state_dict
from core.train.lora import LoRAConfig, add_lora, lora_layers, set_lora_strength


def tiny(seed=0):
    config = get_preset("tiny-t2v")
    dit = WanDiT(config)
    dit.load_state_dict(random_state_dict(config, seed=seed))
    return dit.eval().requires_grad_(False)


def inputs(batch=1, frames=2, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 16, frames, size, size, generator=g),
            torch.randn(batch, 5, 4096, generator=g))


def graphs() -> int:
    """Graphs dynamo has compiled since the last `fresh()` (a recompile adds one)."""
    return counters["stats"]["unique_graphs"]


@pytest.fixture()
def fresh():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def block_args(dit, x, t, ctx):
    """The positional arguments block 0 gets in a forward."""
    seen = {}
    handle = dit.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("args", args))
    with torch.no_grad():
        dit(x, t, ctx)
    handle.remove()
    return seen["args"]


def test_no_graph_break_inside_a_block(fresh):
    dit = tiny()
    x, ctx = inputs()
    tokens = 2 * 2 * 2
    for t in (torch.tensor([500.0]), torch.rand(1, tokens) * 1000):  # per sample, per token (TI2V)
        explanation = torch._dynamo.explain(dit.blocks[0])(*block_args(dit, x, t, ctx))
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
    add_lora(dit, LoRAConfig(rank=2))  # run-time adapters: forward hooks inside the block
    explanation = torch._dynamo.explain(dit.blocks[0])(*block_args(dit, x, torch.tensor([500.0]), ctx))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_matches_eager_and_one_graph_serves_all_layers(fresh):
    dit = tiny()
    x, ctx = inputs()
    t = torch.tensor([700.0])
    with torch.no_grad():
        eager = dit(x, t, ctx)
    assert compile_blocks(dit, backend="aot_eager") is dit
    assert blocks_compiled(dit) and not is_compiled(dit.head)
    compile_blocks(dit, backend="aot_eager")  # idempotent
    with torch.no_grad():
        compiled = dit(x, t, ctx)
    # the traced graph runs the same ops; decompositions may reorder float32 sums (~1e-6)
    assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert graphs() == 1  # two layers, one graph


def test_no_recompile_across_timesteps_cfg_and_lora_strength(fresh):
    dit = tiny()
    add_lora(dit, LoRAConfig(rank=2), generator=torch.Generator().manual_seed(0))
    for layer in lora_layers(dit).values():
        torch.nn.init.normal_(layer.lora_up.weight, std=0.1)
    compile_blocks(dit, backend="eager")
    x, ctx = inputs()
    x2, ctx2 = torch.cat([x, x]), torch.cat([ctx, inputs(seed=1)[1]])
    with torch.no_grad():
        dit(x, torch.tensor([999.0]), ctx)
        dit(x2, torch.tensor([999.0, 999.0]), ctx2)      # batched CFG: batch 2B
        dit(x, torch.tensor([999.0]), ctx)
        warm = graphs()                                   # static B, then dynamic B: at most 2
        assert warm <= 2
        for t in (950.0, 500.0, 3.0):                     # a schedule: steps and both CFG layouts
            dit(x2, torch.tensor([t, t]), ctx2)
            dit(x, torch.tensor([t]), ctx)
        # a run-time adapter's strength is a Python float: dynamo specialises on it until it
        # first changes, then makes it dynamic (one more graph per CFG layout, once)
        set_lora_strength(dit, 0.5)
        dit(x, torch.tensor([400.0]), ctx)
        dit(x2, torch.tensor([400.0, 400.0]), ctx2)
        after_first_change = graphs()
        for strength in (0.7, 1.3, -0.2):
            set_lora_strength(dit, strength)
            dit(x, torch.tensor([300.0]), ctx)
            dit(x2, torch.tensor([300.0, 300.0]), ctx2)
    assert after_first_change <= warm + 2
    assert graphs() == after_first_change


def test_merged_lora_weights_change_without_recompile(fresh):
    """Weights are graph inputs: changing them in place (a merged LoRA, ComfyUI's patching)
    changes the output and compiles nothing."""
    dit = tiny()
    compile_blocks(dit, backend="eager")
    x, ctx = inputs()
    t = torch.tensor([500.0])
    with torch.no_grad():
        before = dit(x, t, ctx)
        n = graphs()
        for block in dit.blocks:
            block.ffn[0].weight.mul_(1.5)
        after = dit(x, t, ctx)
    assert not torch.equal(before, after)
    assert graphs() == n


def test_a_new_size_recompiles_once(fresh):
    dit = tiny()
    compile_blocks(dit, backend="eager")
    with torch.no_grad():
        for frames, size in ((2, 4), (3, 4)):
            x, ctx = inputs(frames=frames, size=size)
            dit(x, torch.tensor([500.0]), ctx)
        n = graphs()
        for frames, size in ((2, 6), (4, 8), (1, 4)):  # later sizes (L > 1): no compile
            x, ctx = inputs(frames=frames, size=size)
            dit(x, torch.tensor([500.0]), ctx)
    assert n == 2
    assert graphs() == n


def test_compile_refuses_what_it_cannot_compile():
    with pytest.raises(TypeError, match="blocks"):
        compile_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backend"):
        compile_blocks(tiny(), backend="no-such-backend")
