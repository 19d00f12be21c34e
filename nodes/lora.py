"""Apply a LoRA (ComfyUI's Wan LoRA layouts, or one trained with `python -m core train`) to a
FlowDiT model with a strength."""
from __future__ import annotations

from dataclasses import replace

from . import host
from .handles import MODEL_TYPE


class FlowDiTLoraLoader:
    DESCRIPTION = ("Applies a LoRA from ComfyUI/models/loras to a FlowDiT model (ComfyUI's Wan LoRA "
                   "layouts, the Wan2.2-Lightning / LightX2V 4-step LoRAs — one per A14B expert — "
                   "or one trained with the pack), also on fp8_scaled models. The input model is "
                   "left unchanged; strength 0 gives the original model. A LoRA made for another "
                   "model is an error that names some of its keys.")
    CATEGORY = "FlowDiT/loaders"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From Load FlowDiT (or another LoRA loader)."}),
            "lora_name": (host.model_names("loras"), {"tooltip": "A LoRA file in ComfyUI/models/loras."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "How strongly the LoRA changes the model (0 = not at "
                                              "all). LightX2V users often run 3.0 on the high-noise "
                                              "expert and 1.0 on the low-noise one."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name=None):
        return host.validate_model_choice("loras", lora_name)

    def apply(self, model, lora_name, strength=1.0):
        if strength == 0.0:
            return (model,)
        hosted = model.hosted.with_lora(host.model_path("loras", lora_name), strength)
        return (replace(model, hosted=hosted, name=f"{model.name} + {lora_name}"),)


NODE_CLASS_MAPPINGS = {"FlowDiTLoraLoader": FlowDiTLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTLoraLoader": "Load LoRA (FlowDiT)"}
