"""Image conditioning: Wan2.2 TI2V first-frame injection and Wan2.1 I2V channel concatenation.

Shapes: B batch, C latent channels, F latent frames, H/W latent height/width, T pixel frames,
L tokens = (F / pt) (H / ph) (W / pw) for the DiT patch (pt, ph, pw), ordered f, then h, then w.

TI2V (Wan2.2 TI2V-5B), the design
---------------------------------
The first latent frame is given (z, the normalised latent of the first image) and must come out
bit-identical; the model must see it as clean (t = 0 on its tokens). Three pieces, each simple:

1. `inject(x)`: x <- (1 - m) z + m x with m = 0 on latent frame 0 and 1 elsewhere, written as a
   `torch.where`, so the first frame is a bit-exact copy of z (no 0 * inf, no rounding).
2. `wrap(model)`: a velocity-model wrapper that (a) injects its input, so the model always sees
   the exact z whatever the solver did, (b) hands the model per-token timesteps
   t_token = 1000 sigma m_token (exactly 0 on first-frame tokens, via `timestep=`), and (c) sets
   the first-frame velocity to exactly 0. With v = 0 there, x0 = x - sigma v = z on the first
   frame for every evaluation, so every solver, multistep ones included, carries a history that is
   consistent with the clamped frame: any linear combination a solver forms of (x, x0 history)
   equals z there up to rounding, and the other frames are untouched (all solver updates act
   element-wise on x).
3. The re-injection after every step removes that rounding: our solvers take it as their
   `project=` hook (before the loop and after each step); any other solver (e.g. ComfyUI's own)
   gets the same result from `wrap` plus one `inject` on its output.

Wan2.1 I2V
----------
The I2V-14B DiT takes in_dim 36 = 16 noise channels + 4 mask channels + 16 image-latent channels,
in that order along C. The image latent is the VAE encoding of the video [first frame, then
T - 1 frames of zeros (mid-grey in [-1, 1])], normalised. The mask is built per PIXEL frame
(1 = given, 0 = to generate) and laid out over latent frames: the first pixel frame is repeated
`temporal_stride` (4) times, so the T = 4(F - 1) + 1 entries become 4F, which are read as F groups
of 4 consecutive pixel frames -> 4 mask channels per latent frame. For a single first frame:
mask = 1 on all 4 channels of latent frame 0, 0 elsewhere.

First-last frame (FLF2V) and Wan2.2 Fun-InP
-------------------------------------------
The same channels with a second given image at the END of the clip: the encoded video is
[start, grey ..., end] and the pixel mask is 1 on pixel frames 0 and T - 1. Laid out as above, the
start fills all 4 mask channels of latent frame 0, while the end image, being only the last of
the 4 pixel frames of the last latent frame, sets only its channel 3 (mask [0, 0, 0, 1] there).
This is the layout of ComfyUI's WanFirstLastFrameToVideo (and WanFunInpaintToVideo, which calls
it); `first_last_mask` and `first_last_pixel_video` build it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from einops import rearrange, repeat

Model = Callable[..., torch.Tensor]


def _patch(patch_size: Sequence[int]) -> tuple[int, int, int]:
    p = tuple(int(n) for n in patch_size)
    if len(p) != 3 or min(p) < 1:
        raise ValueError(f"patch_size must be three positive integers (pt, ph, pw), got {patch_size!r}")
    return p  # type: ignore[return-value]


def token_frame_mask(latent_shape: Sequence[int], patch_size: Sequence[int] = (1, 2, 2)) -> torch.Tensor:
    """Per-token mask [L] (bool): False on tokens of latent frame 0, True elsewhere.

    latent_shape is [B, C, F, H, W]; tokens are ordered f-major, then h, then w.
    """
    _, _, f, h, w = (int(n) for n in latent_shape)
    pt, ph, pw = _patch(patch_size)
    if pt != 1:
        raise ValueError(f"first-frame injection needs temporal patch size 1 (a token must not mix "
                         f"frame 0 with later frames), got patch_size {tuple(patch_size)}")
    if h % ph or w % pw:
        raise ValueError(f"latent size {h}x{w} is not divisible by the patch {ph}x{pw}")
    frame = torch.arange(f) > 0  # [F]
    return repeat(frame, "f -> (f h w)", h=h // ph, w=w // pw)  # [L]


class FirstFrameInjection:
    """Wan2.2 TI2V first-frame injection (see the module docstring for the design).

    z: [B or 1, C, 1, H, W] normalised latent of the first image. Holds references only.
    """

    def __init__(self, z: torch.Tensor, patch_size: Sequence[int] = (1, 2, 2)):
        if not torch.is_tensor(z) or z.ndim != 5 or z.shape[2] != 1:
            raise ValueError(f"the first-frame latent must be [B, C, 1, H, W], got "
                             f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}")
        self.z = z
        self.patch_size = _patch(patch_size)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.z.shape[1] or x.shape[3:] != self.z.shape[3:] \
                or self.z.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"latent {tuple(x.shape)} does not match the first-frame latent "
                             f"{tuple(self.z.shape)}: channels, height and width (and batch, or 1) must agree")

    def frame_mask(self, x: torch.Tensor) -> torch.Tensor:
        """m as a bool tensor [1, 1, F, 1, 1]: False on latent frame 0, True elsewhere."""
        return (torch.arange(x.shape[2], device=x.device) > 0).reshape(1, 1, -1, 1, 1)

    def inject(self, x: torch.Tensor) -> torch.Tensor:
        """x <- (1 - m) z + m x, bit-exact on frame 0: [B, C, F, H, W] -> same (a new tensor)."""
        self._check(x)
        return torch.where(self.frame_mask(x), x, self.z.to(device=x.device, dtype=x.dtype))

    def token_timesteps(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """t_token = 1000 sigma m_token: sigma [B] -> [B, L]; exactly 0 on first-frame tokens."""
        mask = token_frame_mask(x.shape, self.patch_size).to(sigma.device)  # [L]
        t = (sigma * 1000.0).reshape(-1, 1)  # [B, 1]
        return torch.where(mask.reshape(1, -1), t, torch.zeros_like(t))  # [B, L]

    def wrap(self, model: Model) -> Model:
        """The velocity model seen by the solver: injected input, per-token t, zero velocity on
        frame 0. `model` must accept the `timestep=` keyword (`guidance.GuidedVelocity` does)."""
        def wrapped(x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            x_in = self.inject(x)
            v = model(x_in, sigma, timestep=self.token_timesteps(sigma, x), **kwargs)
            return torch.where(self.frame_mask(x), v, torch.zeros_like(v))
        return wrapped


def i2v_pixel_mask(num_frames: int, given: Sequence[int] = (0,), *, batch: int = 1,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel-frame mask [B, T] (float 0/1): 1 on the given frame indices, 0 on frames to generate."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    mask = torch.zeros(batch, num_frames, device=device)
    for i in given:
        if not -num_frames <= i < num_frames:
            raise ValueError(f"given frame {i} is outside a video of {num_frames} frames")
        mask[:, i] = 1.0
    return mask


def i2v_mask(pixel_mask: torch.Tensor, height: int, width: int, temporal_stride: int = 4) -> torch.Tensor:
    """Latent mask channels for Wan2.1 I2V: pixel mask [B, T] -> [B, s, F, H, W], s = stride.

    T must be s (F - 1) + 1. The first pixel frame is repeated s times (the causal VAE encodes it
    alone into latent frame 0), then the s F entries are grouped s by s: channel c of latent frame
    f holds pixel frame s f + c - (s - 1) (frame 0 for f = 0).
    """
    s = int(temporal_stride)
    b, t = pixel_mask.shape
    if (t - 1) % s:
        raise ValueError(f"a video of {t} pixel frames does not map to latent frames with stride {s}: "
                         f"use {s}n+1 frames (e.g. {s * ((t - 1) // s) + 1})")
    full = torch.cat([pixel_mask[:, :1].repeat(1, s), pixel_mask[:, 1:]], dim=1)  # [B, s F]
    per_latent = rearrange(full, "b (f s) -> b s f", s=s)  # [B, s, F]
    return repeat(per_latent, "b s f -> b s f h w", h=height, w=width).contiguous()


def i2v_concat(image_latent: torch.Tensor, mask: torch.Tensor | None = None,
               temporal_stride: int = 4) -> torch.Tensor:
    """The extra channels Wan2.1 I2V concatenates after the noise: [mask, image latent].

    image_latent [B, 16, F, H, W] (normalised encoding of the first frame followed by grey
    frames, see `i2v_pixel_video`); mask [B, s, F, H, W] from `i2v_mask`, default: first frame
    given -> [B, s + 16, F, H, W]. With the 16 noise channels the DiT input has 36 channels.
    """
    if image_latent.ndim != 5:
        raise ValueError(f"image_latent must be [B, C, F, H, W], got {tuple(image_latent.shape)}")
    b, _, f, h, w = image_latent.shape
    if mask is None:
        t = temporal_stride * (f - 1) + 1
        mask = i2v_mask(i2v_pixel_mask(t, batch=b, device=image_latent.device), h, w, temporal_stride)
    if mask.shape[0] != b or mask.shape[2:] != image_latent.shape[2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the image latent {tuple(image_latent.shape)}")
    return torch.cat([mask.to(image_latent), image_latent], dim=1)


def i2v_pixel_video(first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The video the VAE encodes for I2V: first_frame [B, 3, Hp, Wp] in [-1, 1] followed by
    num_frames - 1 zero (mid-grey) frames -> [B, 3, T, Hp, Wp]."""
    if first_frame.ndim != 4:
        raise ValueError(f"first_frame must be an image batch [B, 3, H, W], got {tuple(first_frame.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rest = first_frame.new_zeros(first_frame.shape[0], first_frame.shape[1], num_frames - 1,
                                 *first_frame.shape[2:])
    return torch.cat([first_frame.unsqueeze(2), rest], dim=2)


def first_last_mask(num_frames: int, height: int, width: int, *, start_frames: int = 1,
                    end_frames: int = 0, temporal_stride: int = 4) -> torch.Tensor:
    """Mask channels [1, s, F, H, W] (1 = given) for the first `start_frames` and the last
    `end_frames` pixel frames of a clip of `num_frames` (= s (F - 1) + 1) frames."""
    if start_frames < 0 or end_frames < 0 or start_frames + end_frames > num_frames:
        raise ValueError(f"{start_frames} start and {end_frames} end frames do not fit in a clip of "
                         f"{num_frames} frames")
    given = list(range(start_frames)) + list(range(num_frames - end_frames, num_frames))
    return i2v_mask(i2v_pixel_mask(num_frames, given), height, width, temporal_stride)


def first_last_pixel_video(num_frames: int, start: torch.Tensor | None = None,
                           end: torch.Tensor | None = None) -> torch.Tensor:
    """The video the VAE encodes for first-last-frame: start [B, 3, Ts, H, W] on the first Ts frames,
    end [B, 3, Te, H, W] on the last Te frames, zero (mid-grey in [-1, 1]) elsewhere -> [B, 3, T, H, W].
    Where the two overlap (Ts + Te > T) the end frames win, as in ComfyUI."""
    given = [v for v in (start, end) if v is not None]
    if not given:
        raise ValueError("give a start image, an end image, or both")
    if any(v.ndim != 5 for v in given):
        raise ValueError(f"start/end must be videos [B, 3, T, H, W], got {[tuple(v.shape) for v in given]}")
    ref = given[0]
    if any(v.shape[:2] != ref.shape[:2] or v.shape[3:] != ref.shape[3:] for v in given):
        raise ValueError(f"start and end images must have the same batch, channels and size, got "
                         f"{[tuple(v.shape) for v in given]}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    video = ref.new_zeros(ref.shape[0], ref.shape[1], num_frames, *ref.shape[3:])
    if start is not None:
        n = min(start.shape[2], num_frames)
        video[:, :, :n] = start[:, :, :n]
    if end is not None:
        n = min(end.shape[2], num_frames)
        video[:, :, num_frames - n:] = end[:, :, end.shape[2] - n:]
    return video
