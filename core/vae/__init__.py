"""The Wan causal 3D VAE (Wan2.1: 16 channels, 4x8x8; Wan2.2: 48 channels, 4x16x16)."""
from .config import PRESETS, VAEConfig, detect_config, preset
from .latent_format import WAN21, WAN22, LatentFormat, latent_format_for
from .loader import build_vae, load_vae
from .tiling import TileSpec
from .vae import WanVAE

__all__ = ["PRESETS", "VAEConfig", "detect_config", "preset", "WAN21", "WAN22", "LatentFormat",
           "latent_format_for", "build_vae", "load_vae", "TileSpec", "WanVAE"]
