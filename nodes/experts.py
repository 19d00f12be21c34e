"""Wan2.2 A14B: pair a high-noise and a low-noise expert into one model input for the sampler.

The sampler then runs ONE solver over the whole schedule and hands each model call to its expert
(core.flow.stages); only the active expert is loaded, the other is offloaded at the switch.
"""
from __future__ import annotations

from .handles import MODEL_TYPE, ExpertPair, ModelHandle

SWITCHES = ["boundary", "step"]


def default_boundary(config) -> float:
    """The official Wan2.2 switch point for the model kind: I2V (image channels) 0.900, T2V 0.875."""
    from ..core.flow.stages import WAN22_BOUNDARY

    return WAN22_BOUNDARY["i2v" if config.in_dim > config.out_dim else "t2v"]


def pipeline_experts(pair: ExpertPair, sigmas) -> list:
    """core.pipeline Experts for a pair on the schedule `sigmas`: the high-noise one takes the
    calls at sigma >= its bound, and entering an expert offloads the other before loading it."""
    from ..core.flow.stages import step_boundary
    from ..core.pipeline import Expert

    if pair.switch == "step":
        bound = step_boundary(sigmas, pair.switch_step)
    else:
        bound = pair.boundary if pair.boundary > 0.0 else default_boundary(pair.config)

    def enter(active: ModelHandle, other: ModelHandle):
        def activate():
            other.hosted.offload()
            active.hosted.prepare()
        return activate

    return [Expert(pair.high.module, bound, pair.cfg_high, enter(pair.high, pair.low), "high-noise expert"),
            Expert(pair.low.module, 0.0, pair.cfg_low, enter(pair.low, pair.high), "low-noise expert")]


class FlowDiTExpertPair:
    DESCRIPTION = ("Wan2.2 A14B: pairs the high-noise and the low-noise expert into one model for the "
                   "Euler Flow Sampler. One solver runs the whole schedule (multistep solvers keep their "
                   "history across the switch); only the active expert is loaded at a time.")
    CATEGORY = "FlowDiT/loaders"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("Both experts as one model input for the Euler Flow Sampler.",)
    FUNCTION = "pair"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "high_noise_model": (MODEL_TYPE, {"tooltip": "The high_noise file (Load FlowDiT, optionally "
                                                         "through Load LoRA): the early, noisy steps."}),
            "low_noise_model": (MODEL_TYPE, {"tooltip": "The low_noise file of the same model: the later "
                                                        "steps (details)."}),
            "switch": (SWITCHES, {"default": "boundary", "tooltip":
                                  "Where the low-noise expert takes over. boundary: at a noise level, as "
                                  "Wan2.2's own code does; step: after a number of steps, as ComfyUI's "
                                  "templates with two KSamplerAdvanced do."}),
            "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                                   "switch = boundary: steps at sigma >= boundary run on the high-noise "
                                   "expert. 0 = the official value for the model kind (T2V 0.875, I2V 0.900)."}),
            "switch_step": ("INT", {"default": 2, "min": 0, "max": 1000, "tooltip":
                                    "switch = step: steps 0 .. switch_step-1 run on the high-noise expert, "
                                    "the rest on the low-noise one (e.g. 2 of 4 with the Lightning LoRAs, "
                                    "10 of 20)."}),
            "cfg_high": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                                   "Guidance scale on the high-noise expert. 0 = the sampler's cfg. "
                                   "Official: T2V 4.0, I2V 3.5; 1 with 4-step LoRAs."}),
            "cfg_low": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                                  "Guidance scale on the low-noise expert. 0 = the sampler's cfg. "
                                  "Official: T2V 3.0, I2V 3.5; 1 with 4-step LoRAs."}),
        }}

    def pair(self, high_noise_model, low_noise_model, switch="boundary", boundary=0.0, switch_step=2,
             cfg_high=0.0, cfg_low=0.0):
        from ..core.pipeline import check_experts_match

        for name, m in (("high_noise_model", high_noise_model), ("low_noise_model", low_noise_model)):
            if not isinstance(m, ModelHandle):
                raise ValueError(f"{name} must be one loaded model (Load FlowDiT or Load LoRA), not a "
                                 f"pair of experts")
        if switch not in SWITCHES:
            raise ValueError(f"switch must be one of {SWITCHES}, got {switch!r}")
        check_experts_match([high_noise_model.config, low_noise_model.config],
                            [f"the high-noise model ({high_noise_model.name})",
                             f"the low-noise model ({low_noise_model.name})"])
        return (ExpertPair(high=high_noise_model, low=low_noise_model, switch=switch,
                           boundary=float(boundary), switch_step=int(switch_step),
                           cfg_high=float(cfg_high) or None, cfg_low=float(cfg_low) or None),)


NODE_CLASS_MAPPINGS = {"FlowDiTExpertPair": FlowDiTExpertPair}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTExpertPair": "Wan2.2 A14B Experts (FlowDiT)"}
