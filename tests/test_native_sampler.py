"""The pack's solvers as ComfyUI's native SAMPLER (COMFYUI_PATH set): ComfyUI's model wrapper
returns the denoised x0, and the adapter must reproduce the velocity solver exactly."""
import pytest
import torch


@pytest.mark.comfyui
@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "unipc"])
def test_native_sampler_matches_the_velocity_solver(comfy, pack, monkeypatch, solver):
    from core.flow.schedules import flow_sigmas
    from core.flow.solvers import get_solver

    samplers = comfy("comfy.samplers")
    monkeypatch.setattr(pack.nodes.host, "HAVE_COMFY", True)
    (ksampler,) = pack.NODE_CLASS_MAPPINGS["FlowDiTSamplerSelect"]().select(solver)
    assert isinstance(ksampler, samplers.KSAMPLER)

    # A velocity field with a known x0 form: v = (x - D(x, s)) / s for the denoiser D below.
    target = torch.linspace(-1, 1, 2 * 4 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 4, 3, 2, 2)

    def denoiser(x, sigma, **kwargs):  # what ComfyUI's wrapped model returns
        s = sigma.reshape(-1, 1, 1, 1, 1)
        return (1 - s) * target + s * 0.5 * x

    def velocity(x, sigma, **kwargs):
        s = sigma.reshape(-1, 1, 1, 1, 1)
        return (x - denoiser(x, sigma)) / s

    x = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = flow_sigmas(6, shift=3.0)
    calls = []
    native = ksampler.sampler_function(denoiser, x, sigmas, extra_args={}, callback=calls.append)
    reference = get_solver(solver)(velocity, x, sigmas)
    torch.testing.assert_close(native, reference, rtol=1e-10, atol=1e-10)
    assert len(calls) == 6 and {"i", "x", "denoised"} <= set(calls[0])
