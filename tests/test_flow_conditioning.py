"""TI2V first-frame injection (every solver) and the Wan2.1 I2V channel layout."""
import pytest
import torch

from core.flow.conditioning import (FirstFrameInjection, i2v_concat, i2v_mask, i2v_pixel_mask,
                                    i2v_pixel_video, token_frame_mask)
from core.flow.sampler import sample
from core.flow.schedules import flow_sigmas
from core.flow.solvers import SOLVERS

from test_flow_guidance import StandInDiT, contexts


def _latents(dtype):
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(2, 4, 3, 4, 6, generator=g).to(dtype)   # [B, C, F, H, W]
    z = torch.randn(1, 4, 1, 4, 6, generator=g).to(dtype)       # first frame, shared by the batch
    return noise, z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_first_frame_bit_identical_and_token_timesteps(name, dtype):
    noise, z = _latents(dtype)
    pos, neg = (c.to(dtype) for c in contexts(lp=5, ln=5))
    sigmas = flow_sigmas(5, shift=5.0)
    dit = StandInDiT(patch=(1, 2, 2))
    out = sample(dit, noise, sigmas, positive=pos, negative=neg, cfg=3.0, solver=name, first_frame=z)
    assert torch.equal(out[:, :, :1], z.expand(2, -1, -1, -1, -1))  # bit-identical frame 0
    assert not torch.equal(out[:, :, 1:], noise[:, :, 1:])
    per_frame = (4 // 2) * (6 // 2)  # tokens per latent frame after the (1, 2, 2) patch
    evaluated = sigmas[:-1].tolist() + (sigmas[1:-1].tolist() if name == "heun" else [])
    seen = []
    for call in dit.calls:
        t = call["t"]
        assert t.shape == (call["batch"], 3 * per_frame)
        assert torch.equal(t[:, :per_frame], torch.zeros_like(t[:, :per_frame]))  # exactly 0
        assert torch.equal(t[:, per_frame:], t[:, per_frame:per_frame + 1].expand_as(t[:, per_frame:]))
        seen.append(t[0, -1].item() / 1000.0)
    # 1000 sigma elsewhere, for the sigmas the solver evaluates (cfg=3: one batched call each)
    assert sorted(seen) == pytest.approx(sorted(evaluated), abs=1e-6)


def test_model_input_has_the_injected_frame_and_zero_first_frame_velocity():
    noise, z = _latents(torch.float64)
    inj = FirstFrameInjection(z)
    seen = []

    def model(x, sigma, timestep=None):
        seen.append(x)
        return torch.ones_like(x)
    v = inj.wrap(model)(noise, torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.equal(seen[0][:, :, :1], z.expand(2, -1, -1, -1, -1))
    assert torch.equal(seen[0][:, :, 1:], noise[:, :, 1:])
    assert not v[:, :, 0].any() and bool((v[:, :, 1:] == 1).all())


def test_token_mask_order_and_errors():
    m = token_frame_mask((1, 4, 3, 4, 6), (1, 2, 2))
    assert m.tolist() == [False] * 6 + [True] * 12
    with pytest.raises(ValueError, match="temporal patch"):
        token_frame_mask((1, 4, 3, 4, 6), (2, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        token_frame_mask((1, 4, 3, 5, 6), (1, 2, 2))
    with pytest.raises(ValueError, match="does not match"):
        FirstFrameInjection(torch.zeros(1, 4, 1, 4, 6)).inject(torch.zeros(1, 5, 3, 4, 6))


def test_i2v_first_frame_layout_reaches_36_channels():
    b, f, h, w = 2, 21, 6, 8               # 81 pixel frames -> 21 latent frames
    image_latent = torch.randn(b, 16, f, h, w)
    extra = i2v_concat(image_latent)        # [B, 4 + 16, F, H, W]
    assert extra.shape == (b, 20, f, h, w)
    noise = torch.randn(b, 16, f, h, w)
    assert torch.cat([noise, extra], dim=1).shape[1] == 36
    mask = extra[:, :4]
    assert bool((mask[:, :, 0] == 1).all()) and not mask[:, :, 1:].any()  # 1 on latent frame 0 only
    assert torch.equal(extra[:, 4:], image_latent)


def test_i2v_mask_groups_pixel_frames_by_four():
    # given pixel frames 0 and 80 (first and last): latent frame 0 is all 1 (frame 0 repeated four
    # times), latent frame 20 holds pixel frames 77..80 -> only its channel 3 is 1.
    pm = i2v_pixel_mask(81, given=(0, 80))
    m = i2v_mask(pm, 2, 3)
    assert m.shape == (1, 4, 21, 2, 3)
    assert m[0, :, 0, 0, 0].tolist() == [1, 1, 1, 1]
    assert m[0, :, 20, 0, 0].tolist() == [0, 0, 0, 1]
    assert m[0, :, 1:20].sum().item() == 0
    # pixel frame 5 sits in latent frame 2 (frames 5..8), channel 0
    m5 = i2v_mask(i2v_pixel_mask(9, given=(5,)), 1, 1)
    assert m5[0, :, 2, 0, 0].tolist() == [1, 0, 0, 0] and m5.sum().item() == 1
    with pytest.raises(ValueError, match="4n\\+1 frames"):
        i2v_mask(i2v_pixel_mask(10), 1, 1)


def test_i2v_pixel_video_pads_with_grey():
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    video = i2v_pixel_video(img, 9)
    assert video.shape == (1, 3, 9, 16, 16)
    assert torch.equal(video[:, :, 0], img) and not video[:, :, 1:].any()
