"""Causal VAE encode/decode: ComfyUI IMAGE batches <-> LATENT (raw VAE values, ComfyUI's convention)."""
from __future__ import annotations

import torch

from . import host
from .handles import VAE_TYPE

TILING_MODES = ["off", "auto", "custom"]


def tiling_inputs():
    return {
        "tiling": (TILING_MODES, {"default": "off", "tooltip":
                   "Spatial tiling for frames too large for memory: off, auto (tile size chosen "
                   "from free memory), or custom (tile_size/tile_overlap below)."}),
        "tile_size": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 32, "tooltip":
                      "Tile size in pixels when tiling is 'custom'."}),
        "tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 16, "tooltip":
                         "Overlap between tiles in pixels, blended to hide seams ('custom')."}),
    }


def tiling_option(mode: str, size: int, overlap: int, stride: int):
    """The core VAE's `tiling` argument for a node's tiling widgets (pixels -> latent pixels)."""
    from ..core.vae.tiling import TileSpec

    if mode == "off":
        return None
    if mode == "auto":
        return "auto"
    if 2 * overlap >= size:
        raise ValueError(f"tile_overlap {overlap} must be less than half of tile_size {size}; "
                         f"lower the overlap or raise the tile size")
    return TileSpec(tile=max(1, size // stride), overlap=overlap // stride)


class FlowDiTVAEEncode:
    DESCRIPTION = "Encodes an IMAGE batch (the frames of one video) into a video latent."
    CATEGORY = "FlowDiT/latent"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Raw VAE latent [1, C, (T-1)/4+1, H/s, W/s].",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE_TYPE, {"tooltip": "The causal VAE."}),
            "images": ("IMAGE", {"tooltip": "Video frames, 4n+1 of them; sizes a multiple of the "
                                            "VAE stride."}),
            **tiling_inputs(),
        }}

    def encode(self, vae, images, tiling="off", tile_size=256, tile_overlap=64):
        from ..core.video_io import image_batch_to_video

        device = vae.hosted.prepare()
        video = image_batch_to_video(images)
        tiles = tiling_option(tiling, tile_size, tile_overlap, vae.spatial_stride)
        latent = vae.vae.encode_raw(video.to(device), tiling=tiles,
                                    progress=host.Progress(video.shape[2]).chunk_callback())
        return ({"samples": latent.to(host.intermediate_device(), torch.float32)},)


class FlowDiTVAEDecode:
    DESCRIPTION = "Decodes a video latent into frames, one latent frame at a time (memory stays flat)."
    CATEGORY = "FlowDiT/latent"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The frames as an IMAGE batch (works with ComfyUI's CreateVideo/SaveVideo).",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE_TYPE, {"tooltip": "The causal VAE the latent was made for."}),
            "latent": ("LATENT", {"tooltip": "A video latent (raw VAE values)."}),
            **tiling_inputs(),
        }}

    def decode(self, vae, latent, tiling="off", tile_size=256, tile_overlap=64):
        from ..core.video_io import video_to_image_batch

        samples = latent["samples"]
        if samples.ndim == 4:  # an image latent [B, C, H, W] from an image workflow
            samples = samples.unsqueeze(2)
        device = vae.hosted.prepare()
        tiles = tiling_option(tiling, tile_size, tile_overlap, vae.spatial_stride)
        video = vae.vae.decode_raw(samples.to(device), tiling=tiles,
                                   progress=host.Progress(samples.shape[2]).chunk_callback())
        return (video_to_image_batch(video).to(host.intermediate_device()),)


NODE_CLASS_MAPPINGS = {"FlowDiTVAEEncode": FlowDiTVAEEncode, "FlowDiTVAEDecode": FlowDiTVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTVAEEncode": "Causal VAE Encode",
                              "FlowDiTVAEDecode": "Causal VAE Decode"}
