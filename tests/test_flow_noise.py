"""Seeded initial noise (CPU generator, device independent) and forward noising."""
import pytest
import torch
from torch.testing import assert_close

from core.flow.noise import initial_noise, noise_latent


def test_same_seed_same_noise_different_seed_different_noise():
    a = initial_noise((1, 4, 3, 8, 8), seed=42)
    b = initial_noise((1, 4, 3, 8, 8), seed=42)
    c = initial_noise((1, 4, 3, 8, 8), seed=43)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the dtype only casts the same CPU draw; the global RNG is not touched
    state = torch.random.get_rng_state()
    assert torch.equal(initial_noise((1, 4, 3, 8, 8), seed=42, dtype=torch.float64), a.double())
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError):
        initial_noise((2, 2), seed=-1)


def test_noise_latent():
    x0 = torch.full((1, 2, 1, 2, 2), 3.0, dtype=torch.float64)
    eps = torch.ones_like(x0)
    assert_close(noise_latent(x0, eps, 0.25), torch.full_like(x0, 0.75 * 3.0 + 0.25))
    assert torch.equal(noise_latent(x0, eps, 1.0), eps)


@pytest.mark.gpu
def test_same_noise_on_cuda():
    cpu = initial_noise((1, 16, 3, 8, 8), seed=123)
    cuda = initial_noise((1, 16, 3, 8, 8), seed=123, device="cuda", dtype=torch.bfloat16)
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), cpu.to(torch.bfloat16))
