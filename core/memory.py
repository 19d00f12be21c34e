"""How much memory a generation request needs, estimated before anything is allocated.

A request (width x height pixels, `length` frames, `batch` videos) costs, in bytes:

    latent        B·C·F·h·w·4                       the float32 latent, F = (T-1)/ts + 1, h = H/s, w = W/s
    sampler       SAMPLER_COPIES · latent           solver state: x, noise, velocity, x0, 2 history
    tokens        L = (F/pf)·(h/ph)·(w/pw)          per video, p = the DiT's patch size
    dit           Bf·L·(8·D + 4·D·cb + 2·Dff·cb)    one block's live activations: the float32
                                                    residual stream and its modulated copy (8·D),
                                                    q, k, v and the attention output (4·D·cb), the
                                                    MLP hidden layer and its GELU (2·Dff·cb);
                                                    Bf = 2B with batched CFG; cb = compute bytes
    attention     included above: SDPA / flash kernels work in O(L) memory (no L x L matrix)
    vae_decode    B·DECODE_BYTES_PER_PIXEL_CHANNEL·H·W·dec_dim·(vb/4)   one streamed decode chunk
                                                    (core/vae/tiling.py's measured constant);
                                                    with vae_tiling, H·W of one TILE x TILE tile
    video         B·3·T·H·W·(4 + 1)                 the decoded float32 video and its uint8 frames

The latent, the solver state and the video live in host memory; the DiT and the VAE run one after
the other on the compute device, so the device peak is max(dit, vae_decode). On a CPU both are the
same memory and add up.

`LOWER_BOUND` are model sizes no supported model goes below (the pack's small default model for
widths and channels, the Wan2.2 VAE for the coarsest token grid): an estimate with them is what any
model needs at least, usable before the models are known (ComfyUI's VALIDATE_INPUTS).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

# Solver state held next to the latent: x, noise, velocity, denoised, two multistep histories.
SAMPLER_COPIES = 6
# Working memory of one VAE decode chunk per output pixel per decoder channel (float32), from
# core/vae/tiling.py (measured with tests/benchmarks/bench_vae.py, 2x headroom included).
DECODE_BYTES_PER_PIXEL_CHANNEL = 400
# More solver steps than this are refused: no schedule needs them, and 10^9 steps allocate
# gigabytes of sigmas before the first step (and would never finish).
MAX_STEPS = 10_000
# Side of one VAE decode tile in latent pixels, when the estimate assumes tiled decoding (the
# default TileSpec of core/vae/tiling.py).
TILE = 32
# Without a way to ask the operating system, assume this much memory (bytes).
FALLBACK_TOTAL_BYTES = 16 * 2 ** 30


@dataclass(frozen=True)
class ModelSizes:
    """The model sizes an estimate needs (defaults: Wan2.1 T2V-1.3B with the Wan2.1 VAE)."""

    latent_channels: int = 16                # VAE latent channels C (Wan2.1: 16, Wan2.2: 48)
    spatial_stride: int = 8                  # VAE spatial stride s (Wan2.1: 8, Wan2.2: 16)
    temporal_stride: int = 4                 # VAE temporal stride ts (4n+1 frames -> n+1)
    patch: tuple[int, int, int] = (1, 2, 2)  # DiT patch (frames, height, width)
    dim: int = 1536                          # DiT width D
    ffn_dim: int = 8960                      # DiT MLP hidden width Dff
    decoder_width: int = 96                  # VAE decoder base width (dec_dim)
    compute_bytes: int = 4                   # bytes per DiT activation (4 fp32, 2 bf16/fp16)
    vae_bytes: int = 4                       # bytes per VAE activation
    batched_cfg: bool = True                 # cond and uncond in one doubled batch

    @classmethod
    def from_models(cls, dit_config=None, vae=None, compute_dtype: torch.dtype | None = None,
                    base: "ModelSizes | None" = None) -> "ModelSizes":
        """Sizes read from a DiT config (core.dit.DiTConfig) and/or a VAE (core.vae.WanVAE or
        anything with latent_channels / spatial_stride / temporal_stride and a config.dec_dim);
        what is not given comes from `base` (default: LOWER_BOUND)."""
        out = base or LOWER_BOUND
        if dit_config is not None:
            out = replace(out, patch=tuple(dit_config.patch_size), dim=dit_config.dim,
                          ffn_dim=dit_config.ffn_dim, latent_channels=dit_config.out_dim)
        if compute_dtype is not None:
            out = replace(out, compute_bytes=torch.finfo(compute_dtype).bits // 8)
        if vae is not None:
            dec = getattr(getattr(vae, "config", None), "dec_dim", out.decoder_width)
            out = replace(out, latent_channels=vae.latent_channels, spatial_stride=vae.spatial_stride,
                          temporal_stride=vae.temporal_stride, decoder_width=dec)
        return out


# No supported model needs less: the default model's widths (D 128, Dff 512, 8 latent channels)
# with the Wan2.2 VAE's coarsest grid (stride 16) and half-precision compute. Decoder width 4: a
# tile of the stride-16 grid has 4x the pixels of a stride-8 tile, and the smallest decoder (the
# default model's, width 16) runs at stride 8, so 16 / 4 keeps the tiled decode term below it.
LOWER_BOUND = ModelSizes(latent_channels=8, spatial_stride=16, temporal_stride=4, patch=(1, 2, 2),
                         dim=128, ffn_dim=512, decoder_width=4, compute_bytes=2, vae_bytes=2,
                         batched_cfg=False)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs, by part (see the module docstring for the formulas)."""

    latent: int
    sampler: int
    tokens: int          # DiT tokens per video (a count, not bytes)
    dit: int
    vae_decode: int
    video: int
    on_cpu: bool         # compute device is the CPU: host and device memory are one

    @property
    def host(self) -> int:
        return self.latent + self.sampler + self.video

    @property
    def device(self) -> int:
        return max(self.dit, self.vae_decode)

    @property
    def total(self) -> int:
        return self.host + self.device

    def describe(self) -> str:
        return (f"about {format_bytes(self.total)} (latent and solver state "
                f"{format_bytes(self.latent + self.sampler)}, DiT activations for "
                f"{self.tokens:,} tokens {format_bytes(self.dit)}, VAE decode "
                f"{format_bytes(self.vae_decode)}, decoded video {format_bytes(self.video)})")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def estimate_request_memory(width: int, height: int, length: int, batch: int = 1, *,
                            model: ModelSizes = LOWER_BOUND, cfg: bool = True,
                            device: torch.device | str = "cpu",
                            vae_tiling: bool = True) -> MemoryEstimate:
    """Bytes needed to generate `batch` videos of width x height x length (see module docstring).

    cfg: a negative pass runs too (doubles the DiT batch when the model batches CFG).
    vae_tiling: the decode may be tiled (spatial tiling bounds its memory by one tile), so only a
    tile's working memory counts; False counts a whole frame.
    Sizes are used as given (rounded up to whole latent cells and patches, never refused here).
    """
    s, ts = model.spatial_stride, model.temporal_stride
    f = (max(int(length), 1) - 1) // ts + 1
    h, w = -(-int(height) // s), -(-int(width) // s)
    b = max(int(batch), 1)
    sampling = estimate_sampling_memory((b, model.latent_channels, f, h, w), model=model, cfg=cfg,
                                        device=device)
    pixels = h * s * w * s
    chunk = (min(h, TILE) * min(w, TILE) * s * s) if vae_tiling else pixels
    vae = b * DECODE_BYTES_PER_PIXEL_CHANNEL * chunk * model.decoder_width * model.vae_bytes // 4
    frames = (f - 1) * ts + 1
    video = b * 3 * frames * pixels * (4 + 1)
    return replace(sampling, vae_decode=vae, video=video)


def estimate_sampling_memory(latent_shape: tuple[int, ...], *, model: ModelSizes = LOWER_BOUND,
                             cfg: bool = True, device: torch.device | str = "cpu") -> MemoryEstimate:
    """The sampling part only (latent, solver state, DiT activations) of a latent [B, C, F, h, w]."""
    b, c, f, h, w = (int(n) for n in latent_shape)
    pf, ph, pw = model.patch
    latent = b * c * f * h * w * 4
    tokens = (-(-f // pf)) * (-(-h // ph)) * (-(-w // pw))
    forward_batch = 2 * b if (cfg and model.batched_cfg) else b
    cb, d = model.compute_bytes, model.dim
    dit = forward_batch * tokens * (8 * d + 4 * d * cb + 2 * model.ffn_dim * cb)
    return MemoryEstimate(latent=latent, sampler=SAMPLER_COPIES * latent, tokens=tokens, dit=dit,
                          vae_decode=0, video=0, on_cpu=torch.device(device).type == "cpu")


def check_sampling_fits(latent_shape: tuple[int, ...], *, model: ModelSizes, cfg: bool = True,
                        device: torch.device | str = "cpu", host_bytes: int | None = None,
                        device_bytes: int | None = None) -> MemoryEstimate:
    """The sampling estimate, or ValueError when it cannot fit in this machine's memory."""
    device = torch.device(device)
    host = total_memory_bytes("cpu") if host_bytes is None else int(host_bytes)
    dev = (host if device.type == "cpu" else total_memory_bytes(device)) if device_bytes is None \
        else int(device_bytes)
    estimate = estimate_sampling_memory(latent_shape, model=model, cfg=cfg, device=device)
    if not fits(estimate, host, dev):
        where = (f"{format_bytes(host)} of memory" if device.type == "cpu" else
                 f"{format_bytes(host)} of RAM and {format_bytes(dev)} on {device}")
        raise ValueError(f"sampling a latent of shape {list(latent_shape)} needs "
                         f"{estimate.describe()}, more than this machine's {where}; make the "
                         f"video smaller or shorter (see Empty FlowDiT Video Latent)")
    return estimate


def total_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Total memory of `device` (CUDA: the card's; CPU: physical RAM). The guard compares with the
    total, not the free memory: other models can be unloaded, so only what never fits is refused."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return FALLBACK_TOTAL_BYTES


def fits(estimate: MemoryEstimate, host_bytes: int, device_bytes: int) -> bool:
    """Whether an estimate fits in the given host and device memory."""
    if estimate.on_cpu:
        return estimate.total <= host_bytes
    return estimate.host <= host_bytes and estimate.device <= device_bytes


def largest_fitting(width: int, height: int, length: int, batch: int, *, model: ModelSizes,
                    cfg: bool, device: torch.device | str, host_bytes: int,
                    device_bytes: int, vae_tiling: bool = True) -> tuple[tuple[int, int] | None, int | None]:
    """((w, h) at this length and aspect ratio, frames at this size): the largest that fit, each
    None when even the smallest does not. Sizes are multiples of the stride x patch."""
    step = model.spatial_stride * max(model.patch[1], model.patch[2])

    def ok(w: int, h: int, t: int) -> bool:
        return fits(estimate_request_memory(w, h, t, batch, model=model, cfg=cfg, device=device,
                                            vae_tiling=vae_tiling), host_bytes, device_bytes)

    size = None
    lo, hi = 0, max(width, height) // step   # scale k: the longer side is k·step pixels
    while lo < hi:
        k = (lo + hi + 1) // 2
        w, h = _scaled(width, height, k * step, step)
        if ok(w, h, length):
            lo = k
        else:
            hi = k - 1
    if lo > 0:
        size = _scaled(width, height, lo * step, step)
    frames = None
    lo, hi = -1, (length - 1) // model.temporal_stride  # n: frames = ts·n + 1
    while lo < hi:
        n = (lo + hi + 1) // 2
        if ok(width, height, model.temporal_stride * n + 1):
            lo = n
        else:
            hi = n - 1
    if lo >= 0:
        frames = model.temporal_stride * lo + 1
    return size, frames


def _scaled(width: int, height: int, longer: int, step: int) -> tuple[int, int]:
    """(w, h) with the longer side `longer`, the aspect ratio kept, both multiples of `step`."""
    if width >= height:
        return longer, max(step, height * longer // width // step * step)
    return max(step, width * longer // height // step * step), longer


def check_request_fits(width: int, height: int, length: int, batch: int = 1, *,
                       model: ModelSizes = LOWER_BOUND, cfg: bool = True,
                       device: torch.device | str = "cpu", host_bytes: int | None = None,
                       device_bytes: int | None = None, vae_tiling: bool = True) -> MemoryEstimate:
    """The estimate, or ValueError when the request cannot fit in this machine's memory, with
    the estimate and the largest size (and length) that fits.

    host_bytes / device_bytes: the memory to compare with (default: total RAM, the device's total
    memory). Call it before allocating anything, e.g. from the command line:
    `check_request_fits(w, h, frames, model=ModelSizes.from_models(dit.config, vae))`.
    """
    device = torch.device(device)
    host = total_memory_bytes("cpu") if host_bytes is None else int(host_bytes)
    dev = (host if device.type == "cpu" else total_memory_bytes(device)) if device_bytes is None \
        else int(device_bytes)
    estimate = estimate_request_memory(width, height, length, batch, model=model, cfg=cfg,
                                       device=device, vae_tiling=vae_tiling)
    if fits(estimate, host, dev):
        return estimate
    size, frames = largest_fitting(width, height, length, batch, model=model, cfg=cfg,
                                   device=device, host_bytes=host, device_bytes=dev,
                                   vae_tiling=vae_tiling)
    where = (f"{format_bytes(host)} of memory" if device.type == "cpu" else
             f"{format_bytes(host)} of RAM and {format_bytes(dev)} on {device}")
    hints = []
    if size is not None:
        hints.append(f"{size[0]}x{size[1]} at {length} frames")
    if frames is not None:
        hints.append(f"{frames} frames at {width}x{height}")
    hint = (f"the largest that fits is {' or '.join(hints)}" if hints else
            "nothing at this size or length fits; lower both" + (" or the batch" if batch > 1 else ""))
    described = estimate.describe()
    if model is LOWER_BOUND:  # the models are not known yet: what the smallest model would need
        described = described.replace("about", "at least", 1)
    raise ValueError(f"a {width}x{height}x{length} video (batch {batch}) needs "
                     f"{described}, more than this machine's {where}; {hint}")


def check_steps(steps: int) -> int:
    """`steps` as an int, or ValueError when it is not an integer in 1..MAX_STEPS."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an integer, got {steps!r}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}; flow-matching "
                         f"video models need 4-50")
    return steps

