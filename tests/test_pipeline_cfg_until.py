"""`SampleRequest.cfg_until` (a guidance interval) through `sample_video` with a tiny real DiT."""
import pytest
import torch

from core.dit.config import get_preset
from core.dit.model import WanDiT
from core.pipeline import SampleRequest, sample_video

CPU = torch.device("cpu")


def setup():
    cfg = get_preset("tiny-t2v", in_dim=4, out_dim=4)
    torch.manual_seed(1)
    dit = WanDiT(cfg).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(1, 5, cfg.text_dim, generator=g)
    neg = torch.randn(1, 5, cfg.text_dim, generator=g)
    return dit, dict(latent=torch.randn(1, 4, 2, 4, 4, generator=g), context=pos,
                     negative_context=neg, solver="euler", seed=5)


def run(dit, base, sigmas, **kw):
    return sample_video(dit, SampleRequest(sigmas=torch.tensor(sigmas), **{**base, **kw}),
                        device=CPU)


def test_below_cfg_until_every_step_is_the_positive_pass_alone():
    """Video-to-video from sigma 0.6, cfg_until 0.8: no step is guided, so the result is that
    of cfg 1 bit for bit (the same single positive call per step)."""
    dit, base = setup()
    sigmas = [0.6, 0.4, 0.2, 0.0]
    guided_off = run(dit, base, sigmas, cfg=3.0, cfg_until=0.8)
    assert torch.equal(guided_off, run(dit, base, sigmas, cfg=1.0))
    assert not torch.equal(guided_off, run(dit, base, sigmas, cfg=3.0))   # cfg 3 does differ


def test_cfg_until_zero_is_plain_guidance_and_a_partial_interval_lies_between():
    dit, base = setup()
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    plain = run(dit, base, sigmas, cfg=3.0)
    assert torch.equal(run(dit, base, sigmas, cfg=3.0, cfg_until=0.0), plain)
    partial = run(dit, base, sigmas, cfg=3.0, cfg_until=0.6)
    one = run(dit, base, sigmas, cfg=1.0)
    assert not torch.equal(partial, plain) and not torch.equal(partial, one)


@pytest.mark.parametrize("bad", [1.0, -0.5, float("nan")])
def test_a_cfg_until_outside_0_1_is_a_clear_error(bad):
    dit, base = setup()
    with pytest.raises(ValueError, match="cfg_until must be in"):
        run(dit, base, [1.0, 0.5, 0.0], cfg=3.0, cfg_until=bad)
