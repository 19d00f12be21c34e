"""FlowDiT: a ComfyUI node pack for rectified-flow video DiTs of the Wan family.

ComfyUI imports this folder as a package named after the folder. Importing it must stay cheap and
must not fail when ComfyUI is absent: node classes are plain dict-API classes and the heavy core is
imported lazily inside node functions.
"""
WEB_DIRECTORY = "./web"

# pytest imports this file as a plain module (no package, so no relative imports) when the
# checkout's folder name is not a Python identifier, e.g. "ComfyUI-FlowDiT"; ComfyUI always
# imports it as a package, whatever the folder is called.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
