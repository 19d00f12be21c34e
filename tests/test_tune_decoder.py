"""The default VAE's decoder tuning: it leaves the encoder (the DiT's latent space) alone."""
from __future__ import annotations

import torch

from core.default_model.export_vae import export
from core.default_model.train_vae import SHAPES_VAE, init_for_training
from core.default_model.tune_decoder import TuneConfig, tune
from core.synthetic.shapes import make_clip, to_tensor
from core.train.checkpointing import save_tensors
from core.vae.loader import load_vae
from core.vae.model import WanVAEModel


def test_tuning_changes_only_the_decoder(tmp_path):
    torch.manual_seed(0)
    model = WanVAEModel(SHAPES_VAE)
    init_for_training(model, seed=0)
    init = tmp_path / "init.safetensors"
    save_tensors(model.state_dict(), init)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    cfg = TuneConfig(minutes=10, lr=1e-3, warmup=1, images=2, clips=1, max_steps=3,
                     heldout_images=2, heldout_clips=1)
    tune(tmp_path / "run", init, cfg, n_clips=2, images_per_clip=2)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 3
    for weights in (state["model"], state["ema"]):
        frozen = [k for k in before if k.startswith(("encoder.", "conv1."))]
        tuned = [k for k in before if k.startswith(("decoder.", "conv2."))]
        assert frozen and tuned and len(frozen) + len(tuned) == len(before)
        assert all(torch.equal(weights[k], before[k]) for k in frozen)
        changed = [k for k in tuned if not torch.equal(weights[k], before[k])]
        assert len(changed) > len(tuned) // 2, f"only {len(changed)} of {len(tuned)} changed"

    # The exported file loads through the generic loader and encodes as before (two separately
    # loaded models: equal weights, so only fp32 rounding may differ).
    out = tmp_path / "tuned.safetensors"
    export(tmp_path / "run" / "last.pt", out, check_clips=1, do_fold=False)
    x = to_tensor(make_clip(5, "heldout").frames)[None, :, :5]
    with torch.no_grad():
        torch.testing.assert_close(load_vae(out).encode(x), load_vae(init).encode(x),
                                   rtol=1e-5, atol=1e-5)


def test_keep_first_frame_tunes_only_what_later_frames_use(tmp_path):
    model = WanVAEModel(SHAPES_VAE)
    init_for_training(model, seed=1)
    init = tmp_path / "init.safetensors"
    save_tensors(model.state_dict(), init)

    cfg = TuneConfig(minutes=10, lr=1e-2, warmup=1, images=0, clips=1, keep_first_frame=True,
                     max_steps=2, heldout_images=1, heldout_clips=1)
    tune(tmp_path / "run", init, cfg, n_clips=2, images_per_clip=1)
    tuned = WanVAEModel(SHAPES_VAE)
    tuned.load_state_dict(torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"])

    # What may change: past taps of causal time convolutions and the time up-sampling convs.
    before = model.state_dict()
    for key, value in tuned.state_dict().items():
        if "time_conv" in key:
            continue
        if key.endswith(".weight") and value.dim() == 5 and value.shape[2] == 3:
            assert torch.equal(value[:, :, 2], before[key][:, :, 2]), key   # the current tap
        else:
            assert torch.equal(value, before[key]), key
    x = to_tensor(make_clip(3, "heldout").frames)[None, :, :9]
    with torch.no_grad():
        z = model.encode_stream(x)
        old, new = model.decode_stream(z), tuned.decode_stream(z)
    assert torch.equal(new[:, :, 0], old[:, :, 0])            # the first frame, bit for bit
    assert (new[:, :, 1:] - old[:, :, 1:]).abs().max() > 1e-3  # later frames did train


def test_video_crops_follow_the_vae_time_stride():
    """A video crop's pixels are the frames its latent frames encode, for a VAE x2 in time
    (17 frames -> 9 latent frames) as for x4: pixel frames ts·(F - 1) + 1, rows and columns at
    the spatial stride. Each pixel carries its own (row // s, column // s, frame) and each latent
    cell its (row, column, frame), so a crop taken from the wrong place or length shows."""
    from core.default_model.tune_decoder import Cache, video_batch

    s, frames, size = 4, 17, 64
    for ts in (2, 4):
        f = (frames - 1) // ts + 1
        t_idx = torch.arange(frames).view(frames, 1, 1).expand(frames, size, size)
        rows = (torch.arange(size) // s).view(1, size, 1).expand(frames, size, size)
        cols = (torch.arange(size) // s).view(1, 1, size).expand(frames, size, size)
        clips = torch.stack([rows, cols, t_idx], -1).to(torch.uint8)[None].repeat(3, 1, 1, 1, 1)
        g = size // s
        lat = torch.stack([torch.arange(g).view(1, g, 1).expand(f, g, g),
                           torch.arange(g).view(1, 1, g).expand(f, g, g),
                           torch.arange(f).view(f, 1, 1).expand(f, g, g)]).float()
        cache = Cache(images=clips[:, 0], image_latents=torch.zeros(3, 3, 1, g, g), clips=clips,
                      clip_latents=lat[None].repeat(3, 1, 1, 1, 1),
                      centres=torch.full((3, frames, 2), 30.0))
        for latent_frames in (1, 2, f):
            cfg = TuneConfig(images=0, clips=2, latent_frames=latent_frames, crop=4)
            z, x = video_batch(cache, cfg, torch.Generator().manual_seed(ts))
            assert z.shape[2] == latent_frames and x.shape[2] == ts * (latent_frames - 1) + 1
            pixels = ((x + 1) * 127.5).round()                     # back to the stored uint8
            assert torch.equal(pixels[:, 2, :, 0, 0], torch.arange(x.shape[2]).float().expand(2, -1))
            assert torch.equal(pixels[:, 0, 0, ::s, 0], z[:, 0, 0, :, 0])    # rows
            assert torch.equal(pixels[:, 1, 0, 0, ::s], z[:, 1, 0, 0, :])    # columns
            assert torch.equal(z[:, 2, :, 0, 0], torch.arange(latent_frames).float().expand(2, -1))
