"""ComfyUI node adapters, one file per group of nodes. Node ids are prefixed `FlowDiT` and never
renamed once shipped."""
from . import (conditioning, experts, latents, loaders, lora, sampling, step_cache, text,
               vae_nodes, video, video_load)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (loaders, lora, experts, text, latents, vae_nodes, sampling, step_cache, conditioning,
                video_load, video):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
