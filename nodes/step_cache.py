"""FlowDiT Step Cache: the model with adaptive step caching on, for the pack's sampler."""
from __future__ import annotations

from dataclasses import replace

from .handles import MODEL_TYPE


class FlowDiTStepCache:
    DESCRIPTION = ("Skips DiT calls whose result is predictable from the last computed one "
                   "(EasyCache-style adaptive caching): fewer forwards for a small change of the "
                   "video. Works with every solver of Euler Flow Sampler (FlowDiT), CFG, TI2V and "
                   "LoRAs; the cache lives only for one sampling run.")
    CATEGORY = "FlowDiT/sampling"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with step caching on (the input model is left unchanged).",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From Load FlowDiT (or Load LoRA (FlowDiT))."}),
            "threshold": ("FLOAT", {
                "default": 0.4, "min": 0.0, "max": 5.0, "step": 0.01,
                "tooltip": "How much predicted change of the model's output may add up before the "
                           "DiT runs again. 0 = off (bit-identical to no cache); higher skips more "
                           "steps and changes the video more (see the README's table)."}),
            "start": ("FLOAT", {
                "default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Fraction of the steps at the start (high noise, where the layout "
                           "forms) that always run."}),
            "end": ("FLOAT", {
                "default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Steps from this fraction on always run (fine detail); the last step "
                           "always runs."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, start=None, end=None):
        if start is not None and end is not None and start > end:
            return f"start ({start}) must not be after end ({end}): steps between them may be skipped"
        return True

    def apply(self, model, threshold=0.4, start=0.1, end=0.9):
        from ..core.flow.step_cache import StepCacheConfig

        config = StepCacheConfig(threshold=float(threshold), start=float(start), end=float(end))
        return (replace(model, step_cache=config if config.enabled else None),)


NODE_CLASS_MAPPINGS = {"FlowDiTStepCache": FlowDiTStepCache}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTStepCache": "FlowDiT Step Cache"}
