"""Loader nodes: the DiT from `diffusion_models` (and `unet`), the causal VAE from `vae`."""
from __future__ import annotations

import importlib.util

import torch

from . import host
from .handles import MODEL_TYPE, VAE_TYPE, ModelHandle, VAEHandle

WEIGHT_DTYPES = {
    "default": None,                       # keep the file's dtype
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
# Optional attention kernels, offered only when their package is importable.
OPTIONAL_ATTENTION = {"flash_attn": "flash_attn", "sageattention": "sageattention"}


def attention_choices() -> list[str]:
    """SDPA always; flash-attn / SageAttention only where installed (checked without importing)."""
    return ["sdpa"] + [name for name, pkg in OPTIONAL_ATTENTION.items()
                       if importlib.util.find_spec(pkg) is not None]


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 activations on GPUs that support it, fp16 on older GPUs, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class FlowDiTLoader:
    DESCRIPTION = ("Loads a Wan-family video DiT (Wan2.1 T2V/I2V, Wan2.2 TI2V-5B, a Wan2.2 A14B "
                   "high- or low-noise expert, or the pack's own small model), including ComfyUI's "
                   "fp8_scaled files. The configuration is detected from the file.")
    CATEGORY = "FlowDiT/loaders"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The diffusion transformer, managed by ComfyUI's memory manager.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (host.model_names("diffusion_models"), {
                "tooltip": "A DiT checkpoint in ComfyUI/models/diffusion_models (official Wan "
                           ".safetensors/.pth or ComfyUI's repackaged file)."}),
            "weight_dtype": (list(WEIGHT_DTYPES), {
                "default": "default",
                "tooltip": "How the weights are stored in memory. 'default' keeps the file's dtype "
                           "(an fp8_scaled file stays fp8 and each layer is dequantised when it "
                           "runs); fp8 halves memory again and upcasts each layer when it runs; "
                           "fp16/bf16 on an fp8_scaled file dequantises it once (twice the memory)."}),
            "attention": (attention_choices(), {
                "default": "sdpa",
                "tooltip": "Attention kernel. PyTorch SDPA always works; flash-attn and "
                           "SageAttention appear only when installed."}),
        }, "optional": {
            "compile": ("BOOLEAN", {
                "default": False,
                "tooltip": "torch.compile each transformer block (one compiled block serves all "
                           "layers). The first run compiles (seconds to a minute) and later runs "
                           "are faster; a new size compiles once more. Needs a working compiler "
                           "(Triton on GPUs, a C++ compiler on the CPU)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name=None):
        return host.validate_model_choice("diffusion_models", model_name)

    def load(self, model_name, weight_dtype="default", attention="sdpa", compile=False):
        from ..core.dit.loader import load_dit

        path = host.model_path("diffusion_models", model_name)
        device = host.torch_device()
        compute = compute_dtype_for(device)
        module = load_dit(path, device="cpu", dtype=compute, weight_dtype=WEIGHT_DTYPES[weight_dtype],
                          attention=attention)
        module.eval().requires_grad_(False)
        if compile:
            from ..core.dit.compile import compile_blocks

            compile_blocks(module)
        return (ModelHandle(hosted=host.HostedModel(module), name=model_name, compute_dtype=compute),)


class FlowDiTVAELoader:
    DESCRIPTION = ("Loads a Wan-family causal video VAE (Wan2.1: 16 channels, x8; Wan2.2: 48 "
                   "channels, x16; or the pack's own small VAE). The version is detected from the file.")
    CATEGORY = "FlowDiT/loaders"
    RETURN_TYPES = (VAE_TYPE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The causal VAE: encodes frames to latents and decodes them back.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (host.model_names("vae"), {
                "tooltip": "A VAE file in ComfyUI/models/vae (Wan2.1_VAE.pth, wan_2.1_vae.safetensors, "
                           "Wan2.2_VAE.pth, wan2.2_vae.safetensors, or the pack's own)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, vae_name=None):
        return host.validate_model_choice("vae", vae_name)

    def load(self, vae_name):
        from ..core.vae.loader import load_vae

        path = host.model_path("vae", vae_name)
        vae = load_vae(path, device="cpu", dtype=torch.float32)
        module = vae if isinstance(vae, torch.nn.Module) else vae.model
        module.eval().requires_grad_(False)
        return (VAEHandle(vae=vae, hosted=host.HostedModel(module), name=vae_name),)


NODE_CLASS_MAPPINGS = {"FlowDiTLoader": FlowDiTLoader, "FlowDiTVAELoader": FlowDiTVAELoader}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowDiTLoader": "Load FlowDiT", "FlowDiTVAELoader": "Load Causal VAE"}
