"""The causal stream: chunked encode/decode equals one full causal pass, and is causal.

float64 throughout, tiny configs (core.vae.config PRESETS 'test-2.1' / 'test-2.2')."""
import threading

import pytest
import torch

from core.vae import PRESETS
from core.vae.model import WanVAEModel, random_state_dict

VERSIONS = ["test-2.1", "test-2.2"]


def _model(name):
    cfg = PRESETS[name]
    model = WanVAEModel(cfg).double().eval()
    model.load_state_dict(random_state_dict(cfg, seed=1, dtype=torch.float64))
    return model


@pytest.fixture(scope="module", params=VERSIONS)
def model(request):
    return _model(request.param)


def _video(model, frames, seed=0, hw=(2, 3)):
    s = model.config.spatial_stride
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, hw[0] * s, hw[1] * s, generator=g, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_chunked_equals_full_pass(model, frames):
    video = _video(model, frames)
    z_stream = model.encode_stream(video)                 # chunks of 1, 4, 4, ...
    z_full = model.encode_stream(video, chunked=False)    # the whole clip at once
    assert z_stream.shape == (1, model.config.z_dim, (frames - 1) // 4 + 1, 2, 3)
    torch.testing.assert_close(z_stream, z_full, rtol=1e-10, atol=1e-10)
    x_stream = model.decode_stream(z_full)                # one latent frame at a time
    x_full = model.decode_stream(z_full, chunked=False)
    assert x_stream.shape == video.shape
    torch.testing.assert_close(x_stream, x_full, rtol=1e-10, atol=1e-10)


def test_encode_is_causal(model):
    # Latent frame j sees pixel frames <= 4j (frame 0 alone makes latent frame 0).
    video = _video(model, 13)
    for k in (0, 4, 6, 8):
        changed = video.clone()
        changed[:, :, k + 1:] = _video(model, 13, seed=5)[:, :, k + 1:]
        for chunked in (True, False):
            a = model.encode_stream(video, chunked=chunked)
            b = model.encode_stream(changed, chunked=chunked)
            keep = k // 4 + 1                              # latent frames with 4j <= k
            torch.testing.assert_close(a[:, :, :keep], b[:, :, :keep], rtol=0, atol=1e-12)
            assert (a[:, :, keep:] - b[:, :, keep:]).abs().amax() > 1e-6  # the rest did change


def test_decode_is_causal(model):
    # Latent frame j makes pixel frames 4j-3 .. 4j (latent frame 0 makes pixel frame 0).
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, model.config.z_dim, 4, 2, 2, generator=g, dtype=torch.float64)
    for j in range(3):
        changed = z.clone()
        changed[:, :, j + 1:] = torch.randn_like(changed[:, :, j + 1:])
        for chunked in (True, False):
            a = model.decode_stream(z, chunked=chunked)
            b = model.decode_stream(changed, chunked=chunked)
            keep = 4 * j + 1
            torch.testing.assert_close(a[:, :, :keep], b[:, :, :keep], rtol=0, atol=1e-12)
            assert (a[:, :, keep:] - b[:, :, keep:]).abs().amax() > 1e-6


def test_progress_is_called_per_chunk(model):
    calls = []
    z = model.encode_stream(_video(model, 9), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    model.decode_stream(z, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_concurrent_calls_do_not_share_state(model):
    # The caches are local to each call: two threads on one model get the sequential results.
    videos = [_video(model, 9, seed=s) for s in (10, 11)]
    expected = [model.decode_stream(model.encode_stream(v)) for v in videos]
    results = [None, None]

    def work(i):
        results[i] = model.decode_stream(model.encode_stream(videos[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Another thread may run with another intra-op thread count (OpenMP settings are per thread),
    # which may change fp32 rounding; a cache shared between the calls would differ by O(1).
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not any(hasattr(m, "_feat") or hasattr(m, "cache") for m in model.modules())
