"""Load a video file from ComfyUI's input folder as an IMAGE batch (for video-to-video)."""
from __future__ import annotations

from . import host
from .latents import check_video_request, video_size_inputs


class FlowDiTLoadVideo:
    DESCRIPTION = ("Reads a video (mp4/webm/gif/...) from ComfyUI's input folder, keeps the first "
                   "`length` frames (4n+1) and scales/crops them to width x height.")
    CATEGORY = "FlowDiT/video"
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("images", "fps")
    OUTPUT_TOOLTIPS = ("The frames as an IMAGE batch.", "The video's frame rate.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.video_io import VIDEO_SUFFIXES

        return {"required": {
            "video": (host.input_files(VIDEO_SUFFIXES), {"tooltip": "A video in ComfyUI/input."}),
            **video_size_inputs(batch=False, size_note=" Frames are scaled and centre-cropped;"
                                                       " the first `length` are kept."),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None):
        return check_video_request(width, height, length)

    def load(self, video, width, height, length):
        import torch

        from ..core.video_io import read_video, resize_center_crop

        frames, fps = read_video(host.input_path(video), max_frames=length)
        if frames.shape[0] < length:
            usable = 4 * ((frames.shape[0] - 1) // 4) + 1
            raise ValueError(f"{video} has only {frames.shape[0]} frames; set length to {usable} or less")
        images = torch.from_numpy(frames).float() / 255.0
        return (resize_center_crop(images, width, height), float(fps))


NODE_CLASS_MAPPINGS = {"FlowDiTLoadVideo": FlowDiTLoadVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTLoadVideo": "Load Video (FlowDiT)"}
