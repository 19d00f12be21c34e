"""The VAE's CPU fast paths compute the same function as the plain reference ops.

`CausalConv3d` calls oneDNN's kernel directly for narrow layers (core/vae/layers.py); the result
must equal F.conv3d's, forward and backward, and the profiler must show that kernel really ran.
`RMSNorm` is written with rsqrt(mean(x^2)); it must equal the reference's F.normalize form.
"""
import pytest
import torch
import torch.nn.functional as F

from core.vae import layers
from core.vae.layers import CausalConv3d, FeatureCache, RMSNorm

needs_onednn = pytest.mark.skipif(not layers.onednn_available(),
                                  reason="this PyTorch build has no oneDNN (mkldnn)")


def _conv_kernels(fn) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()
            if e.key in ("aten::slow_conv3d_forward", "aten::mkldnn_convolution")}


@needs_onednn
@pytest.mark.parametrize("kernel, padding, stride", [(3, 1, 1), ((1, 3, 3), (0, 1, 1), 1),
                                                     ((3, 3, 3), (1, 1, 1), (1, 2, 2))])
def test_onednn_path_equals_conv3d_forward_and_backward(kernel, padding, stride):
    torch.manual_seed(0)
    conv = CausalConv3d(6, 5, kernel, stride=stride, padding=padding)
    assert conv.prefer_onednn
    x = torch.randn(1, 6, 5, 7, 9, requires_grad=True)
    y = conv(x, FeatureCache())
    # The reference: the same causal padding, then nn.Conv3d's own forward (PyTorch's heuristic).
    x_ref = x.detach().clone().requires_grad_()
    xp = F.pad(x_ref, (0, 0, 0, 0, conv.past_frames, 0))
    y_ref = torch.nn.Conv3d.forward(conv, xp)
    # Different kernels sum in a different order: float32 rounding, relative ~1e-6.
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)
    grads_ref = torch.autograd.grad(y_ref, (x_ref, conv.weight, conv.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_narrow_layers_run_onednn_wide_ones_keep_pytorchs_choice():
    torch.set_num_threads(1)  # where the default heuristic would pick slow_conv3d for both
    narrow = CausalConv3d(8, 8, 3, padding=1)
    wide = CausalConv3d(layers.ONEDNN_MAX_CHANNELS, 8, 3, padding=1)
    assert narrow.prefer_onednn and not wide.prefer_onednn
    # Time-only and pointwise kernels are plain GEMMs, faster on PyTorch's own path.
    assert not CausalConv3d(8, 8, (3, 1, 1), padding=(1, 0, 0)).prefer_onednn
    assert not CausalConv3d(8, 8, 1).prefer_onednn
    with torch.no_grad():
        assert _conv_kernels(lambda: narrow(torch.randn(1, 8, 1, 8, 8), FeatureCache())) == {
            "aten::mkldnn_convolution"}
        x = torch.randn(1, layers.ONEDNN_MAX_CHANNELS, 1, 4, 4)  # N*C*T*H small: slow path
        assert _conv_kernels(lambda: wide(x, FeatureCache())) == {"aten::slow_conv3d_forward"}
        # Not float32 (float64 here): PyTorch's own choice, oneDNN has no float64 kernel.
        narrow64 = CausalConv3d(8, 8, 3, padding=1).double()
        assert _conv_kernels(lambda: narrow64(torch.randn(1, 8, 1, 8, 8, dtype=torch.float64),
                                              FeatureCache())) == {"aten::slow_conv3d_forward"}


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # flags() on a CPU build
def test_onednn_switched_off_by_the_user_is_respected():
    conv = CausalConv3d(8, 8, 3, padding=1)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        assert not layers.onednn_available()
        assert "aten::mkldnn_convolution" not in _conv_kernels(
            lambda: conv(torch.randn(1, 8, 1, 8, 8), FeatureCache()))


@pytest.mark.parametrize("images", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rmsnorm_equals_normalize_reference(images, dtype):
    torch.manual_seed(1)
    norm = RMSNorm(12, images=images).to(dtype)
    with torch.no_grad():
        norm.gamma.mul_(1 + 0.3 * torch.randn_like(norm.gamma))
    shape = (2, 12, 5, 6) if images else (2, 12, 3, 5, 6)
    x = (torch.randn(*shape) * 3).to(dtype)
    x[0, :, 0] = 0.0                      # an all-zero vector stays zero (no NaN)
    ref = F.normalize(x.double(), dim=1) * 12 ** 0.5 * norm.gamma.double()
    out = norm(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Tolerance: a few ulps of the dtype (float32 ~6e-8 relative, bfloat16 ~4e-3).
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    assert (out[0, :, 0] == 0).all()


def test_rmsnorm_gradients_equal_the_reference():
    torch.manual_seed(2)
    norm = RMSNorm(6).double()
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64)
    got = torch.autograd.grad(norm(x), (x, norm.gamma), g)
    ref = F.normalize(x, dim=1) * 6 ** 0.5 * norm.gamma
    want = torch.autograd.grad(ref, (x, norm.gamma), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)  # float64: rounding only
