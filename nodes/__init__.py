"""ComfyUI node adapters. Each submodule contributes its classes to the mappings below."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
