"""Node specs and graph helpers shared by the workflow builder and the workflow tests.

A node spec says, for one node type, which inputs are sockets, which are widgets (in the order
the editor stores their values) and which outputs it has. The pack's own specs are read from the
node classes; the few ComfyUI core nodes the shipped workflows use are described here, and
checked against a real ComfyUI's /object_info when one is available.
"""
from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# Frontend-only nodes: in UI workflows, never in API prompts.
VIRTUAL_NODES = {"Note", "MarkdownNote"}


@dataclass(frozen=True)
class NodeSpec:
    sockets: tuple[tuple[str, str], ...]      # (name, type) of linkable inputs, in order
    widgets: tuple[str, ...]                  # widget input names, in widgets_values order
    outputs: tuple[tuple[str, str], ...]      # (name, type)
    control_after: tuple[str, ...] = ()       # widgets followed by a 'control_after_generate' value
    extra_ui_widgets: tuple[str, ...] = ()    # UI-only widgets (e.g. LoadImage's upload button)
    required: tuple[str, ...] = ()            # inputs an API prompt must give


NATIVE_SPECS = {
    "CLIPLoader": NodeSpec(sockets=(), widgets=("clip_name", "type", "device"),
                           outputs=(("CLIP", "CLIP"),), required=("clip_name", "type")),
    "CLIPTextEncode": NodeSpec(sockets=(("clip", "CLIP"),), widgets=("text",),
                               outputs=(("CONDITIONING", "CONDITIONING"),), required=("clip", "text")),
    "LoadImage": NodeSpec(sockets=(), widgets=("image",), outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")),
                          extra_ui_widgets=("upload",), required=("image",)),
    "Note": NodeSpec(sockets=(), widgets=("text",), outputs=()),
}


def spec_from_class(cls) -> NodeSpec:
    """NodeSpec of a classic dict-API node class."""
    types = cls.INPUT_TYPES()
    sockets, widgets, control, required = [], [], [], []
    for section in ("required", "optional"):
        for name, entry in types.get(section, {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            if section == "required":
                required.append(name)
            if isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES:
                widgets.append(name)
                if opts.get("control_after_generate"):
                    control.append(name)
            else:
                sockets.append((name, kind))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return NodeSpec(sockets=tuple(sockets), widgets=tuple(widgets),
                    outputs=tuple(zip(names, cls.RETURN_TYPES)), control_after=tuple(control),
                    required=tuple(required))


def spec_from_object_info(info: dict) -> NodeSpec:
    """NodeSpec from one entry of ComfyUI's /object_info (for checking NATIVE_SPECS)."""
    sockets, widgets, control, required = [], [], [], []
    for section in ("required", "optional"):
        for name, entry in info.get("input", {}).get(section, {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if section == "required":
                required.append(name)
            if isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO":
                widgets.append(name)
                if opts.get("control_after_generate"):
                    control.append(name)
            else:
                sockets.append((name, kind))
    outputs = tuple(zip(info.get("output_name", []), info.get("output", [])))
    return NodeSpec(sockets=tuple(sockets), widgets=tuple(widgets), outputs=outputs,
                    control_after=tuple(control), required=tuple(required))


def ui_widget_count(spec: NodeSpec) -> int:
    return len(spec.widgets) + len(spec.control_after) + len(spec.extra_ui_widgets)
