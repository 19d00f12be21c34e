"""Every node runs end to end through the fallback host adapter (no ComfyUI) on tiny random
models written to a model folder: load -> latent -> sample -> decode -> IMAGE -> MP4."""
import copy

import pytest
import torch
from safetensors.torch import save_file
from conftest import use_models_dir

DIT_PRESETS = {"t2v": "tiny-t2v", "i2v": "tiny-i2v", "ti2v": "tiny-ti2v"}
VAE_PRESETS = {"2.1": "test-2.1", "2.2": "test-2.2"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from core.dit.config import dit_metadata
    from core.dit.config import get_preset as dit_preset
    from core.dit.random_weights import random_state_dict as dit_weights
    from core.vae.config import preset as vae_preset
    from core.vae.model import random_state_dict as vae_weights

    root = tmp_path_factory.mktemp("models")
    (root / "diffusion_models").mkdir()
    (root / "vae").mkdir()
    for name, p in DIT_PRESETS.items():
        # ComfyUI's repackaged layout (prefixed keys) for one of them.
        sd = dit_weights(dit_preset(p), seed=1)
        if name == "t2v":
            sd = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
        save_file(sd, str(root / "diffusion_models" / f"{name}.safetensors"),
                  metadata=dit_metadata(dit_preset(p)))  # as the pack writes DiT files
    for name, p in VAE_PRESETS.items():
        save_file(vae_weights(vae_preset(p), seed=2), str(root / "vae" / f"vae{name}.safetensors"))
    write_lora(root / "loras" / "test_lora.safetensors")
    return root


def write_lora(path):
    """A rank-4 LoRA for the tiny t2v model with non-zero up weights (so it changes the output)."""
    from core.dit.config import get_preset
    from core.dit.model import WanDiT
    from core.train.lora import LoRAConfig, add_lora, lora_layers, save_lora

    path.parent.mkdir(parents=True, exist_ok=True)
    dit = WanDiT(get_preset("tiny-t2v"))
    add_lora(dit, LoRAConfig(rank=4), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(dit).values():
            layer.lora_up.weight.copy_(0.2 * torch.randn(layer.lora_up.weight.shape, generator=g))
    save_lora(dit, path)


@pytest.fixture()
def nodes(pack, models_dir, monkeypatch, tmp_path):
    use_models_dir(pack, models_dir, monkeypatch)
    monkeypatch.setenv("FLOWDIT_OUTPUT_DIR", str(tmp_path / "out"))
    return {name: cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


def text(seed, length=7):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, length, 4096, generator=g), {"pooled_output": None}]]


def run_t2v(nodes, seed=0, cfg=2.0, solver="euler", steps=3):
    (model,) = nodes["FlowDiTLoader"].load("t2v.safetensors", "default", "sdpa")
    (vae,) = nodes["FlowDiTVAELoader"].load("vae2.1.safetensors")
    (latent,) = nodes["FlowDiTEmptyVideoLatent"].generate(vae, 32, 32, 5, 1)
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(steps, 5.0, 1.0)
    (out,) = nodes["FlowDiTSampler"].sample(model, text(1), text(2, 5), latent, sigmas, solver, cfg, seed)
    (images,) = nodes["FlowDiTVAEDecode"].decode(vae, out)
    return latent, out, images


def test_text_to_video_end_to_end(nodes):
    latent, out, images = run_t2v(nodes)
    assert latent["samples"].shape == (1, 16, 2, 4, 4)
    assert out["samples"].shape == latent["samples"].shape
    assert images.shape == (5, 32, 32, 3)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    # The sampler changed the latent, and the seed decides the result.
    assert not torch.equal(out["samples"], latent["samples"])
    _, again, _ = run_t2v(nodes)
    _, other, _ = run_t2v(nodes, seed=1)
    assert torch.equal(again["samples"], out["samples"])
    assert not torch.allclose(other["samples"], out["samples"])


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "unipc"])
def test_every_solver_runs_with_cfg_one(nodes, solver):
    _, out, images = run_t2v(nodes, cfg=1.0, solver=solver, steps=2)
    assert torch.isfinite(out["samples"]).all() and images.shape[0] == 5


def test_ti2v_keeps_the_first_frame(nodes):
    (model,) = nodes["FlowDiTLoader"].load("ti2v.safetensors", "default", "sdpa")
    (vae,) = nodes["FlowDiTVAELoader"].load("vae2.2.safetensors")
    image = torch.rand(1, 64, 64, 3)
    (latent,) = nodes["FlowDiTTI2VFirstFrame"].build(vae, image, 64, 64, 9, 1)
    assert latent["samples"].shape == (1, 48, 3, 4, 4)
    assert torch.equal(latent["noise_mask"][:, :, 0], torch.zeros(1, 1, 4, 4))
    assert torch.equal(latent["noise_mask"][:, :, 1:], torch.ones(1, 1, 2, 4, 4))
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(3, 5.0, 1.0)
    (out,) = nodes["FlowDiTSampler"].sample(model, text(1), text(2), latent, sigmas, "unipc", 3.0, 7)
    # Normalise -> sample -> denormalise may round the injected frame in the last bits only.
    torch.testing.assert_close(out["samples"][:, :, :1], latent["samples"][:, :, :1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out["samples"][:, :, 1:], latent["samples"][:, :, 1:])
    assert "noise_mask" not in out


def test_i2v_conditioning_drives_the_36_channel_model(nodes):
    class ClipVisionOutput:  # what ComfyUI's CLIPVisionEncode returns, as far as Wan uses it
        penultimate_hidden_states = torch.randn(1, 257, 1280)

    (model,) = nodes["FlowDiTLoader"].load("i2v.safetensors", "default", "sdpa")
    (vae,) = nodes["FlowDiTVAELoader"].load("vae2.1.safetensors")
    pos, neg, latent = nodes["FlowDiTI2VConditioning"].build(
        text(1), text(2), vae, torch.rand(1, 40, 40, 3), 32, 32, 5, 1, ClipVisionOutput())
    assert pos[0][1]["concat_latent_image"].shape == (1, 16, 2, 4, 4)
    assert torch.equal(pos[0][1]["concat_mask"][:, :, 0], torch.zeros(1, 1, 4, 4))
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(2, 3.0, 1.0)
    (out,) = nodes["FlowDiTSampler"].sample(model, pos, neg, latent, sigmas, "euler", 2.0, 0)
    assert out["samples"].shape == (1, 16, 2, 4, 4) and torch.isfinite(out["samples"]).all()
    # Without the image the I2V model cannot run: a clear error, not a shape crash.
    with pytest.raises(ValueError, match="image-to-video"):
        nodes["FlowDiTSampler"].sample(model, text(1), text(2), latent, sigmas, "euler", 2.0, 0)


def test_video_to_video_and_save(nodes, tmp_path):
    from core.video_io import read_video

    (model,) = nodes["FlowDiTLoader"].load("t2v.safetensors", "fp8_e4m3fn", "sdpa")
    (vae,) = nodes["FlowDiTVAELoader"].load("vae2.1.safetensors")
    frames = torch.rand(5, 32, 32, 3)
    (latent,) = nodes["FlowDiTVAEEncode"].encode(vae, frames)
    assert latent["samples"].shape == (1, 16, 2, 4, 4)
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(4, 1.0, 0.5)
    assert float(sigmas[0]) == pytest.approx(0.5)
    (out,) = nodes["FlowDiTSampler"].sample(model, text(1), text(2), latent, sigmas, "dpmpp_2m", 1.0, 3)
    (images,) = nodes["FlowDiTVAEDecode"].decode(vae, out, "custom", 64, 16)
    result = nodes["FlowDiTSaveVideo"].save(images, 8.0, "clips/test", "mp4")
    saved = result["ui"]["images"][0]
    assert saved["subfolder"] == "clips" and saved["filename"].endswith(".mp4")
    back, fps = read_video(tmp_path / "out" / "clips" / saved["filename"])
    assert back.shape == (5, 32, 32, 3) and fps == pytest.approx(8.0)


def test_user_mistakes_get_clear_errors(nodes):
    (model,) = nodes["FlowDiTLoader"].load("ti2v.safetensors", "default", "sdpa")
    (vae21,) = nodes["FlowDiTVAELoader"].load("vae2.1.safetensors")
    (latent,) = nodes["FlowDiTEmptyVideoLatent"].generate(vae21, 32, 32, 5, 1)
    (sigmas,) = nodes["FlowDiTScheduler"].schedule(2, 5.0, 1.0)
    with pytest.raises(ValueError, match="16 channels .* 48"):
        nodes["FlowDiTSampler"].sample(model, text(1), text(2), latent, sigmas, "euler", 2.0, 0)
    with pytest.raises(ValueError, match="not found"):
        nodes["FlowDiTLoader"].load("missing.safetensors", "default", "sdpa")
    with pytest.raises(ValueError, match="model folder"):
        nodes["FlowDiTVAELoader"].load("../vae/vae2.1.safetensors")
    with pytest.raises(ValueError, match="stride"):
        nodes["FlowDiTEmptyVideoLatent"].generate(vae21, 36, 32, 5, 1)


def test_lora_changes_the_model_and_leaves_the_input_unchanged(nodes, models_dir):
    from core.train.lora import load_lora

    (model,) = nodes["FlowDiTLoader"].load("t2v.safetensors", "default", "sdpa")
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([500.0]), text(3)[0][0]
    before = model.module(x, t, ctx)
    (zero,) = nodes["FlowDiTLoraLoader"].apply(model, "test_lora.safetensors", 0.0)
    (lora,) = nodes["FlowDiTLoraLoader"].apply(model, "test_lora.safetensors", 1.0)
    assert zero is model
    with_lora = lora.module(x, t, ctx)
    assert not torch.allclose(with_lora, before, atol=1e-4)
    torch.testing.assert_close(model.module(x, t, ctx), before, rtol=0, atol=0)
    # Run-time adapters equal the LoRA merged into a copy of the weights.
    merged = copy.deepcopy(model.module)
    load_lora(merged, models_dir / "loras" / "test_lora.safetensors", strength=1.0, mode="merge")
    torch.testing.assert_close(merged(x, t, ctx), with_lora, rtol=1e-4, atol=1e-5)


def test_own_text_encoder_nodes_give_conditioning(nodes, models_dir, tmp_path):
    from core.text.encoder import TextEncoder, TextEncoderConfig, save_text_encoder

    vocab = ["a", "red", "circle", "moving", "right", "on", "black", "background"]
    encoder = TextEncoder(TextEncoderConfig(vocab_size=len(vocab) + 2, dim=32), vocab)
    (models_dir / "text_encoders").mkdir(exist_ok=True)
    save_text_encoder(encoder, models_dir / "text_encoders" / "tiny_text.safetensors")
    (loaded,) = nodes["FlowDiTTextEncoderLoader"].load("tiny_text.safetensors")
    (cond,) = nodes["FlowDiTTextEncode"].encode(loaded, "a red circle moving right on a black background")
    (null,) = nodes["FlowDiTTextEncode"].encode(loaded, "")
    assert cond[0][0].shape == (1, 16, 32) and not torch.allclose(cond[0][0], null[0][0])
    torch.testing.assert_close(cond[0][0], encoder.encode(["a red circle moving right on a black background"]))
