"""FlowDiT: a ComfyUI node pack for rectified-flow video DiTs of the Wan family.

ComfyUI imports this folder as a package named after the folder. Importing it must stay cheap and
must not fail when ComfyUI is absent: node classes are plain dict-API classes and the heavy core is
imported lazily inside node functions.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
