"""A small word-level text encoder for the pack's default model (see `encoder`)."""
from .encoder import (TextEncoder, TextEncoderConfig, WordTokenizer, load_text_encoder,
                      save_text_encoder)

__all__ = ["TextEncoder", "TextEncoderConfig", "WordTokenizer", "load_text_encoder",
           "save_text_encoder"]
