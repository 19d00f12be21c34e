"""Scheduler and sampler nodes. The sampler unpacks ComfyUI's types, calls one core function
(`core.pipeline.sample_video`) and repacks; it also offers the pack's solvers as a native SAMPLER
for ComfyUI's SamplerCustomAdvanced."""
from __future__ import annotations

import torch

from . import host
from .experts import pipeline_experts
from .handles import MODEL_TYPE, ExpertPair

SOLVERS = ["euler", "heun", "dpmpp_2m", "unipc"]
SOLVER_TOOLTIP = ("ODE solver: euler (1st order, the paper's Eq. 8), heun (2nd order, two model "
                  "calls per step), dpmpp_2m and unipc (2nd-order multistep, one call per step; "
                  "unipc is the Wan reference's default).")


class FlowDiTScheduler:
    DESCRIPTION = ("Flow-matching sigmas sigma_i = shift(linspace(denoise, 0, steps+1)[i]), ending "
                   "at 0. Shift k > 1 spends more steps at high noise (Wan uses 5; 3 for 480p I2V).")
    CATEGORY = "FlowDiT/sampling"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("Noise levels from high to 0 (ComfyUI's SIGMAS; native samplers take them too).",)
    FUNCTION = "schedule"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "steps": ("INT", {"default": 30, "min": 1, "max": 1000,
                              "tooltip": "Number of solver steps."}),
            "shift": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 100.0, "step": 0.1,
                                "tooltip": "Noise-level shift k: sigma' = k*sigma/(1+(k-1)*sigma). "
                                           "1 = plain linear."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "1 = from pure noise. Below 1 (video-to-video) starts "
                                             "at that noise level from the input latent."}),
        }}

    def schedule(self, steps, shift, denoise=1.0):
        from ..core.flow.schedules import flow_sigmas

        return (flow_sigmas(steps, shift=shift, denoise=denoise).float().cpu(),)


def unpack_conditioning(conditioning, what: str):
    """(context [1, L, D], options dict) of the first entry of a ComfyUI CONDITIONING."""
    if not conditioning:
        raise ValueError(f"{what} conditioning is empty; connect a CLIPTextEncode output")
    context, options = conditioning[0][0], conditioning[0][1]
    if not torch.is_tensor(context) or context.ndim != 3:
        raise ValueError(f"{what} conditioning holds no text embedding [1, L, D]; connect a "
                         f"CLIPTextEncode (CLIPLoader type 'wan') output")
    return context, options


def clip_features(options: dict):
    """CLIP vision tokens [B, 257, 1280] from ComfyUI's clip_vision_output, if present."""
    out = options.get("clip_vision_output")
    return None if out is None else getattr(out, "penultimate_hidden_states", None)


class FlowDiTSampler:
    DESCRIPTION = ("Samples a video latent with a FlowDiT model, or the two Wan2.2 A14B experts in one "
                   "run: classifier-free guidance, TI2V first-frame injection (latent with noise_mask) "
                   "and I2V / first-last-frame conditioning.")
    CATEGORY = "FlowDiT/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised latent (raw VAE values), for Causal VAE Decode or ComfyUI's VAEDecode.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From Load FlowDiT, or both Wan2.2 A14B experts from "
                                              "Wan2.2 A14B Experts."}),
            "positive": ("CONDITIONING", {"tooltip": "What the video should show (umT5 text encoding)."}),
            "negative": ("CONDITIONING", {"tooltip": "What to steer away from (used when cfg > 1)."}),
            "latent": ("LATENT", {"tooltip": "Empty latent (text-to-video), an encoded video "
                                             "(video-to-video, with denoise < 1), or a TI2V first-frame latent."}),
            "sigmas": ("SIGMAS", {"tooltip": "From FlowMatch Scheduler."}),
            "solver": (SOLVERS, {"default": "unipc", "tooltip": SOLVER_TOOLTIP}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Guidance scale w: v = v_neg + w (v_pos - v_neg). 1 = no "
                                         "negative pass (twice as fast). With two experts, each "
                                         "expert's own cfg wins where it is set (not 0)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFF_FFFF_FFFF_FFFF,
                             "control_after_generate": True,
                             "tooltip": "Noise seed; noise is drawn on the CPU so a seed gives the "
                                        "same video on any device."}),
        }, "optional": {
            "cfg_until": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.05,
                                    "tooltip": "Guide only while the noise level sigma is above "
                                               "this; below it cfg is 1 (one model call per step). "
                                               "0 = guide every step (Wan's way). FlowDiT's default "
                                               "model draws steadier shapes with 0.7."}),
        }}

    def sample(self, model, positive, negative, latent, sigmas, solver="unipc", cfg=5.0, seed=0,
               cfg_until=0.0):
        from ..core.pipeline import SampleRequest, sample_video

        pair = isinstance(model, ExpertPair)
        scales = [cfg] if not pair else [w if w is not None else cfg for w in (model.cfg_high, model.cfg_low)]
        pos_context, pos_options = unpack_conditioning(positive, "positive")
        neg_context = unpack_conditioning(negative, "negative")[0] if any(w != 1.0 for w in scales) else None
        if pair:
            # Each expert is loaded when sampling reaches it (and the other one offloaded).
            dit, device = pipeline_experts(model, sigmas), model.high.hosted.device
        else:
            dit, device = model.module, model.hosted.prepare()
        bar = host.Progress(max(len(sigmas) - 1, 1))
        preview = host.make_previewer(model.config.out_dim, getattr(dit, "latent_format", None)
                                      if not pair else None)

        def on_step(info):
            host.check_interrupt()
            shown = preview(info["denoised"]) if preview is not None else None
            bar.update(info["i"] + 1, info["total"], shown)

        request = SampleRequest(
            latent=latent["samples"], sigmas=sigmas, seed=seed, solver=solver, cfg=cfg,
            cfg_until=cfg_until, context=pos_context, negative_context=neg_context,
            noise_mask=latent.get("noise_mask"),
            concat_latent=pos_options.get("concat_latent_image"),
            concat_mask=pos_options.get("concat_mask"),
            clip_fea=clip_features(pos_options), step_cache=model.step_cache)
        # The cancel check also runs between the DiT's blocks, so a long step stops within a block.
        out = sample_video(dit, request, device=device, dtype=model.compute_dtype, callback=on_step,
                           cancel=host.check_interrupt)
        result = {k: v for k, v in latent.items() if k != "noise_mask"}
        result["samples"] = out.to(host.intermediate_device())
        return (result,)


class FlowDiTSamplerSelect:
    DESCRIPTION = ("The pack's flow-matching solvers as a native SAMPLER, for ComfyUI's "
                   "SamplerCustomAdvanced with ComfyUI's own models.")
    CATEGORY = "FlowDiT/sampling"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    FUNCTION = "select"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"solver": (SOLVERS, {"default": "euler", "tooltip": SOLVER_TOOLTIP})}}

    def select(self, solver):
        if not host.HAVE_COMFY:
            raise ValueError("a native SAMPLER needs ComfyUI; use Euler Flow Sampler instead")
        import comfy.samplers

        from ..core.flow.solvers import get_solver, velocity_model_from_denoiser

        solve = get_solver(solver)

        def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
            # ComfyUI's model wrapper returns the denoised x0; ours integrate the velocity.
            return solve(velocity_model_from_denoiser(model), x, sigmas, extra_args=extra_args,
                         callback=callback, disable=disable)

        return (comfy.samplers.KSAMPLER(sampler_function),)


NODE_CLASS_MAPPINGS = {"FlowDiTScheduler": FlowDiTScheduler, "FlowDiTSampler": FlowDiTSampler,
                       "FlowDiTSamplerSelect": FlowDiTSamplerSelect}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTScheduler": "FlowMatch Scheduler",
                              "FlowDiTSampler": "Euler Flow Sampler (FlowDiT)",
                              "FlowDiTSamplerSelect": "FlowDiT Solver (native SAMPLER)"}
