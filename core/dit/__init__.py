"""The Wan-family video DiT: configuration and detection, the model, and loading checkpoints."""
from .attention import available_attention_backends
from .config import PRESETS, DiTConfig, detect_config, get_preset
from .loader import load_dit, save_dit
from .model import WanDiT

__all__ = ["DiTConfig", "PRESETS", "WanDiT", "available_attention_backends", "detect_config",
           "get_preset", "load_dit", "save_dit"]
