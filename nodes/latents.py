"""Empty video latent whose channel count and strides come from the chosen VAE."""
from __future__ import annotations

import torch

from . import host
from .handles import VAE_TYPE

MAX_SIZE = 8192
MAX_LENGTH = 1025
MAX_BATCH = 64
SIZE_STEP = 16       # the finest pixel grid any supported VAE+patch accepts; the VAE checks its own


def _whole_number(name: str, value) -> tuple[int | None, str | None]:
    """(value as an int, None) or (None, the reason it is not a whole number). The API can send
    anything: a string that ComfyUI failed to convert still reaches VALIDATE_INPUTS."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{name} must be a whole number, got {value!r}"
    if isinstance(value, float) and not value.is_integer():
        return None, f"{name} must be a whole number, got {value!r}"
    return int(value), None


def check_video_size(width=None, height=None, length=None, batch_size=None):
    """VALIDATE_INPUTS helper: a reason string for an impossible size, or True.

    Inputs named in VALIDATE_INPUTS skip ComfyUI's own min/max checks, so ranges are checked here.
    """
    if length is not None:
        length, problem = _whole_number("length", length)
        if problem:
            return problem
        if not 1 <= length <= MAX_LENGTH:
            return f"length {length} must be between 1 and {MAX_LENGTH} frames"
        if (length - 1) % 4:
            lo = 4 * ((length - 1) // 4) + 1
            return f"length {length} is not 4n+1 frames; use {lo} or {lo + 4}"
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        value, problem = _whole_number(name, value)
        if problem:
            return problem
        if not SIZE_STEP <= value <= MAX_SIZE:
            return f"{name} {value} must be between {SIZE_STEP} and {MAX_SIZE} pixels"
        if value % SIZE_STEP:
            lo = max(SIZE_STEP, value - value % SIZE_STEP)
            return f"{name} {value} is not a multiple of {SIZE_STEP}; use {lo} or {lo + SIZE_STEP}"
    if batch_size is not None:
        batch_size, problem = _whole_number("batch_size", batch_size)
        if problem:
            return problem
        if not 1 <= batch_size <= MAX_BATCH:
            return f"batch_size {batch_size} must be between 1 and {MAX_BATCH}"
    return True


def check_video_request(width=None, height=None, length=None, batch_size=None, vae=None):
    """VALIDATE_INPUTS / run-time helper: check_video_size, then the memory guard. Without the VAE
    (a linked input is unknown at validation) the estimate uses the smallest supported model, so
    only requests that fit no model are refused before running; with it, the VAE's own sizes."""
    ok = check_video_size(width, height, length, batch_size)
    if ok is not True or None in (width, height, length):
        return ok
    from ..core.memory import ModelSizes, check_request_fits

    model = ModelSizes.from_models(vae=getattr(vae, "vae", vae)) if vae is not None else None
    try:
        check_request_fits(int(width), int(height), int(length), int(batch_size or 1),
                           device=host.torch_device(),
                           **({"model": model} if model is not None else {}))
    except ValueError as err:
        return str(err)
    return True


def latent_shape(vae, width: int, height: int, length: int, batch: int) -> tuple[int, ...]:
    """[B, C, F, H, W] of the latent that `vae` makes from `length` frames of width x height."""
    s, ts = vae.spatial_stride, vae.temporal_stride
    if width % s or height % s:
        raise ValueError(f"{width}x{height} is not divisible by this VAE's stride {s}; use "
                         f"{width - width % s or s}x{height - height % s or s}")
    if (length - 1) % ts:
        raise ValueError(f"length {length} must be {ts}n+1 frames for this VAE")
    return (batch, vae.latent_channels, (length - 1) // ts + 1, height // s, width // s)


def video_size_inputs(width: int = 832, height: int = 480, length: int = 81, batch: bool = True,
                      size_note: str = "") -> dict:
    """The width / height / length (/ batch_size) widgets shared by the nodes that size a video."""
    inputs = {
        "width": ("INT", {"default": width, "min": SIZE_STEP, "max": MAX_SIZE, "step": SIZE_STEP,
                          "tooltip": f"Video width in pixels (multiple of 16; 32 for Wan2.2).{size_note}"}),
        "height": ("INT", {"default": height, "min": SIZE_STEP, "max": MAX_SIZE, "step": SIZE_STEP,
                           "tooltip": "Video height in pixels (multiple of 16; 32 for Wan2.2)."}),
        "length": ("INT", {"default": length, "min": 1, "max": MAX_LENGTH, "step": 4,
                           "tooltip": "Number of frames, 4n+1 (1 = a single image)."}),
    }
    if batch:
        inputs["batch_size"] = ("INT", {"default": 1, "min": 1, "max": MAX_BATCH,
                                        "tooltip": "How many videos to generate at once."})
    return inputs


class FlowDiTEmptyVideoLatent:
    DESCRIPTION = "An empty (all-zero) video latent sized for the chosen VAE, to start text-to-video."
    CATEGORY = "FlowDiT/latent"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("A zero latent [B, C, F, H/s, W/s] in ComfyUI's raw latent convention.",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE_TYPE, {"tooltip": "Sets the latent channels and strides (Wan2.1: 16ch x8, "
                                          "Wan2.2: 48ch x16)."}),
            **video_size_inputs(),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None, batch_size=None):
        return check_video_request(width, height, length, batch_size)

    def generate(self, vae, width, height, length, batch_size=1):
        shape = latent_shape(vae, width, height, length, batch_size)
        fits = check_video_request(width, height, length, batch_size, vae=vae)
        if fits is not True:
            raise ValueError(fits)
        return ({"samples": torch.zeros(shape, device=host.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"FlowDiTEmptyVideoLatent": FlowDiTEmptyVideoLatent}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTEmptyVideoLatent": "Empty FlowDiT Video Latent"}
