"""Save frames as an MP4 (or GIF) through imageio-ffmpeg, for installs without ComfyUI's video nodes."""
from __future__ import annotations

import re

from . import host


def next_output_path(prefix: str, suffix: str):
    """`<output>/<prefix>_00001.<suffix>`, counting up past existing files. The prefix may name
    a subfolder but never leave the output folder."""
    problem = host.check_model_name(prefix)
    if problem:
        raise ValueError(f"filename_prefix {prefix!r} must stay inside the output folder "
                         f"(no absolute paths, no '..')")
    out_dir = host.output_directory()
    target = out_dir / prefix
    folder, stem = target.parent, target.name
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)\.")
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    path = folder / f"{stem}_{max(taken, default=0) + 1:05d}.{suffix}"
    return path, str(folder.relative_to(out_dir)) if folder != out_dir else ""


class FlowDiTSaveVideo:
    DESCRIPTION = ("Writes the frames as an H.264 MP4 (or animated GIF, exact total length) into "
                   "ComfyUI's output folder; fails with a message, never a broken file.")
    CATEGORY = "FlowDiT/video"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The frames, e.g. from Causal VAE Decode."}),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0,
                              "tooltip": "Frames per second (Wan models are trained at 16; Wan2.2 "
                                         "TI2V-5B at 24)."}),
            "filename_prefix": ("STRING", {"default": "FlowDiT/video", "tooltip":
                                "File name prefix inside the output folder; may name a subfolder."}),
            "format": (["mp4", "gif"], {"default": "mp4", "tooltip": "mp4 (H.264) or animated gif."}),
        }}

    def save(self, images, fps=16.0, filename_prefix="FlowDiT/video", format="mp4"):
        from ..core.video_io import write_video

        if len(images) == 0:
            raise ValueError("Save Video (FlowDiT): 'images' holds 0 frames, so there is no video "
                             "to write; check the node that made them (e.g. the VAE decode)")
        path, subfolder = next_output_path(filename_prefix, format)
        # Written under a temporary name, checked (writer status, frame count), then renamed;
        # a failure raises and leaves the output folder as it was.
        write_video(images, path, fps=fps)
        return {"ui": {"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}


NODE_CLASS_MAPPINGS = {"FlowDiTSaveVideo": FlowDiTSaveVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTSaveVideo": "Save Video (FlowDiT, MP4)"}
