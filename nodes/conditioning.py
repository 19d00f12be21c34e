"""Image-to-video conditioning: Wan2.2 TI2V first-frame latent, and Wan2.1 I2V / Wan2.2 I2V-A14B (mask
+ image latent channels, optional end image for first-last-frame, optional CLIP vision tokens). Both follow ComfyUI's own conventions (a LATENT with
`noise_mask`; conditioning values `concat_latent_image` / `concat_mask` / `clip_vision_output`), so
latents and conditioning made here also work with ComfyUI's samplers, and theirs with ours."""
from __future__ import annotations

import torch

from . import host
from .handles import VAE_TYPE
from .latents import check_video_request, latent_shape, video_size_inputs

CROP_NOTE = " The start image is scaled and centre-cropped to it."


def set_values(conditioning, values: dict):
    """A copy of a CONDITIONING list with `values` added to every entry's options dict."""
    return [[tensor, {**options, **values}] for tensor, options in conditioning]


def encode_start_image(vae, start_image, width, height):
    """Raw latent [1, C, 1, H/s, W/s] of the first image of `start_image`."""
    from ..core.video_io import image_batch_to_video, resize_center_crop

    frame = resize_center_crop(start_image[:1], width, height)
    device = vae.hosted.prepare()
    return vae.vae.encode_raw(image_batch_to_video(frame).to(device)).float().cpu()


class FlowDiTTI2VFirstFrame:
    DESCRIPTION = ("Wan2.2 TI2V: a video latent whose first frame is the encoded start image. The "
                   "sampler keeps that frame clean (its tokens see t = 0) and re-injects it every step.")
    CATEGORY = "FlowDiT/conditioning"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Latent with the first frame set and a noise_mask that is 0 on it.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE_TYPE, {"tooltip": "The VAE of the model (Wan2.2 VAE for TI2V-5B)."}),
            "start_image": ("IMAGE", {"tooltip": "The first frame of the video."}),
            **video_size_inputs(1280, 704, 121, size_note=CROP_NOTE),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None, batch_size=None):
        return check_video_request(width, height, length, batch_size)

    def build(self, vae, start_image, width, height, length, batch_size=1):
        shape = latent_shape(vae, width, height, length, batch_size)
        first = encode_start_image(vae, start_image, width, height)
        samples = torch.zeros(shape)
        samples[:, :, :1] = first
        mask = torch.ones((batch_size, 1) + shape[2:])
        mask[:, :, :1] = 0.0
        device = host.intermediate_device()
        return ({"samples": samples.to(device), "noise_mask": mask.to(device)},)


class FlowDiTI2VConditioning:
    DESCRIPTION = ("Image-to-video for Wan2.1 I2V-14B and Wan2.2 I2V-A14B: adds the start image (as "
                   "image-latent channels plus a mask) and, optionally, an end image (first-last-frame, "
                   "also Wan2.2 Fun-InP) and CLIP vision tokens (Wan2.1 only) to both conditionings; "
                   "returns an empty latent.")
    CATEGORY = "FlowDiT/conditioning"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "Text conditioning (umT5)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative text conditioning."}),
            "vae": (VAE_TYPE, {"tooltip": "The Wan2.1 VAE."}),
            "start_image": ("IMAGE", {"tooltip": "The first frame of the video (the first image of the batch)."}),
            **video_size_inputs(832, 480, 81, size_note=CROP_NOTE),
        }, "optional": {
            "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip":
                                   "From ComfyUI's CLIPVisionEncode (clip_vision_h), for the image tokens "
                                   "of Wan2.1 I2V. Wan2.2 A14B has no image branch and ignores it."}),
            "end_image": ("IMAGE", {"tooltip": "Optional last frame (first-last-frame video, Wan2.2 Fun-InP): "
                                               "the last image of the batch; scaled and centre-cropped too."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None, batch_size=None):
        return check_video_request(width, height, length, batch_size)

    def build(self, positive, negative, vae, start_image, width, height, length, batch_size=1,
              clip_vision_output=None, end_image=None):
        from ..core.flow.conditioning import first_last_mask, first_last_pixel_video
        from ..core.video_io import image_batch_to_video, resize_center_crop

        shape = latent_shape(vae, width, height, length, batch_size)
        if end_image is not None and length < 2:
            raise ValueError("a first-last-frame video needs length >= 5 (the start and the end "
                             "image are different frames)")
        # The image latent is the encoding of [start image, gray frames, (end image)] over the whole clip.
        start = image_batch_to_video(resize_center_crop(start_image[:1], width, height))
        end = None if end_image is None else image_batch_to_video(resize_center_crop(end_image[-1:], width, height))
        pixels = first_last_pixel_video(length, start, end)  # [1, 3, T, H, W] in [-1, 1]
        device = vae.hosted.prepare()
        image_latent = vae.vae.encode_raw(pixels.to(device)).float().cpu()
        if end is None:
            mask = torch.ones((1, 1) + shape[2:])  # ComfyUI's convention: 0 = given
            mask[:, :, :1] = 0.0
        else:  # per pixel frame, 4 channels per latent frame (as WanFirstLastFrameToVideo)
            mask = 1.0 - first_last_mask(length, shape[3], shape[4], start_frames=1, end_frames=1,
                                         temporal_stride=vae.temporal_stride)
        values = {"concat_latent_image": image_latent, "concat_mask": mask}
        if clip_vision_output is not None:
            values["clip_vision_output"] = clip_vision_output
        latent = {"samples": torch.zeros(shape, device=host.intermediate_device())}
        return (set_values(positive, values), set_values(negative, values), latent)


NODE_CLASS_MAPPINGS = {"FlowDiTTI2VFirstFrame": FlowDiTTI2VFirstFrame,
                       "FlowDiTI2VConditioning": FlowDiTI2VConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTTI2VFirstFrame": "TI2V First-Frame Latent (FlowDiT)",
                              "FlowDiTI2VConditioning": "I2V / First-Last-Frame Conditioning (FlowDiT)"}
