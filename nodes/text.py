"""The pack's own small text encoder (for its default model): load it, encode a caption into
ComfyUI's native CONDITIONING. Wan checkpoints use ComfyUI's umT5 (Load CLIP, type 'wan') instead."""
from __future__ import annotations

from . import host

TEXT_TYPE = "FLOWDIT_TEXT_ENCODER"


class FlowDiTTextEncoderLoader:
    DESCRIPTION = ("Loads the pack's own small text encoder (models/text_encoders, or the one shipped "
                   "with the pack). For Wan models use Load CLIP (type 'wan') instead.")
    CATEGORY = "FlowDiT/loaders"
    RETURN_TYPES = (TEXT_TYPE,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("A word-level caption encoder trained with the pack's default model.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (host.model_names("text_encoders"), {
                "tooltip": "A FlowDiT text encoder .safetensors (not umT5)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, text_encoder_name=None):
        return host.validate_model_choice("text_encoders", text_encoder_name)

    def load(self, text_encoder_name):
        from ..core.text.encoder import load_text_encoder

        return (load_text_encoder(host.model_path("text_encoders", text_encoder_name)),)


class FlowDiTTextEncode:
    DESCRIPTION = "Encodes a caption with the pack's own text encoder into CONDITIONING."
    CATEGORY = "FlowDiT/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Text conditioning for Euler Flow Sampler (FlowDiT).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": (TEXT_TYPE, {"tooltip": "From Load FlowDiT Text Encoder."}),
            "text": ("STRING", {"multiline": True, "default": "a yellow square moving up on a gray background",
                                "tooltip": "A caption like 'a red circle moving right on a black "
                                           "background'. Empty = the null caption (for the negative)."}),
        }}

    def encode(self, text_encoder, text):
        context = text_encoder.encode([text]).float().to(host.intermediate_device())
        return ([[context, {"pooled_output": None}]],)


NODE_CLASS_MAPPINGS = {"FlowDiTTextEncoderLoader": FlowDiTTextEncoderLoader,
                       "FlowDiTTextEncode": FlowDiTTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTTextEncoderLoader": "Load FlowDiT Text Encoder",
                              "FlowDiTTextEncode": "FlowDiT Text Encode"}
