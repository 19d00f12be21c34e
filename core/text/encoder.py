"""A small text encoder for the default model's captions: word tokenizer + tiny transformer.

    encoder = load_text_encoder("flowdit_shapes_text.safetensors")
    context = encoder.encode(["a red circle moving right on a black background"])  # [B, L, D]
    null = encoder.encode([""])                                                     # CFG negative

The vocabulary is a fixed word list (stored in the .safetensors metadata with the configuration).
Text is lower-cased and split on whitespace and punctuation; a word outside the vocabulary becomes
`<unk>`, and one plain log line (logger `core.text.encoder`, level WARNING) names the unknown words
and the vocabulary (the model never saw them, so it cannot follow them). Every caption
is padded with `<pad>` to `max_len` tokens, so the empty caption is all padding: that is the null
condition that training substitutes for ~10% of captions (classifier-free guidance dropout).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

PAD, UNK = "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, UNK)
METADATA_KEY_CONFIG = "flowdit_text_config"
METADATA_KEY_VOCAB = "flowdit_text_vocabulary"
_WORD = re.compile(r"[a-z0-9]+")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int            # number of tokens, special tokens included
    dim: int = 64              # width D of the token embeddings and of the output context
    num_layers: int = 2        # transformer encoder layers (pre-norm)
    num_heads: int = 2         # attention heads
    ffn_mult: int = 4          # FFN hidden width = ffn_mult * dim
    max_len: int = 16          # tokens per caption (longer captions are an error)

    def __post_init__(self) -> None:
        if self.vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
        if min(self.dim, self.num_layers, self.num_heads, self.ffn_mult, self.max_len) < 1:
            raise ValueError(f"text encoder sizes must be positive: {self}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} does not split into {self.num_heads} heads")


class WordTokenizer:
    """Whitespace/punctuation word tokenizer over a fixed vocabulary (ids: <pad> 0, <unk> 1)."""

    def __init__(self, vocabulary: list[str] | tuple[str, ...], max_len: int) -> None:
        words = list(vocabulary)
        if tuple(words[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            words = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary has duplicate words")
        self.vocabulary = tuple(words)
        self.max_len = max_len
        self._ids = {w: i for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.vocabulary)

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def known_words(self) -> list[str]:
        """The vocabulary without the special tokens."""
        return [w for w in self.vocabulary if w not in SPECIAL_TOKENS]

    def unknown_words(self, texts: list[str] | str) -> list[str]:
        """The words of `texts` outside the vocabulary, each once, in order of appearance."""
        if isinstance(texts, str):
            texts = [texts]
        seen = dict.fromkeys(w for text in texts if isinstance(text, str)
                             for w in self.words(text) if w not in self._ids)
        return list(seen)

    def describe_unknown(self, words: list[str]) -> str:
        """One plain line naming unknown words and the vocabulary."""
        return (f"unknown words in the prompt: {', '.join(words)} (the model ignores them); it "
                f"knows only: {', '.join(self.known_words())}")

    def encode(self, texts: list[str] | str) -> torch.Tensor:
        """Token ids [B, max_len] (int64); unknown words -> <unk>, reported in one log line."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.max_len), self._ids[PAD], dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"captions must be strings, got {type(text).__name__}")
            words = self.words(text)
            if len(words) > self.max_len:
                raise ValueError(f"caption {text!r} has {len(words)} words; this text encoder "
                                 f"takes at most {self.max_len}")
            for col, word in enumerate(words):
                out[row, col] = self._ids.get(word, self._ids[UNK])
        unknown = self.unknown_words(texts)
        if unknown:
            _log.warning("%s", self.describe_unknown(unknown))
        return out


class TextEncoder(nn.Module):
    """Token ids [B, L] -> context [B, L, D]: embeddings + learned positions + pre-norm
    transformer layers + a final LayerNorm."""

    def __init__(self, config: TextEncoderConfig, vocabulary: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = WordTokenizer(vocabulary, config.max_len)
        if len(self.tokenizer) != config.vocab_size:
            raise ValueError(f"vocabulary has {len(self.tokenizer)} tokens, config says "
                             f"{config.vocab_size}")
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_len, config.dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.dim, config.num_heads, config.ffn_mult * config.dim,
                                       dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.dim)
        nn.init.normal_(self.token_embedding.weight, std=0.5)
        nn.init.normal_(self.position_embedding, std=0.1)

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] int64 -> context [B, L, D] float32."""
        if tokens.ndim != 2 or tokens.shape[1] != self.config.max_len:
            raise ValueError(f"tokens must be [B, {self.config.max_len}], got {list(tokens.shape)}")
        x = self.token_embedding(tokens) + self.position_embedding      # [B, L, D]
        for layer in self.layers:
            x = layer(x)                                                # [B, L, D]
        return self.norm(x)

    @torch.no_grad()
    def describe_unknown(self, words: list[str]) -> str:
        """One plain line naming unknown words and the vocabulary."""
        return (f"unknown words in the prompt: {', '.join(words)} (the model ignores them); it "
                f"knows only: {', '.join(self.known_words())}")

    def encode(self, texts: list[str] | str) -> torch.Tensor:
        """Captions -> context [B, L, D] on the encoder's device ("" is the null condition)."""
        tokens = self.tokenizer.encode(texts).to(self.position_embedding.device)
        return self.forward(tokens)


def save_text_encoder(encoder: TextEncoder, path: str | os.PathLike) -> None:
    """Weights as .safetensors with the configuration and vocabulary in the metadata (atomic)."""
    from safetensors.torch import save_file

    metadata = {METADATA_KEY_CONFIG: json.dumps(asdict(encoder.config)),
                METADATA_KEY_VOCAB: json.dumps(list(encoder.tokenizer.vocabulary))}
    tensors = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    tmp = f"{os.fspath(path)}.partial"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def load_text_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> TextEncoder:
    """A TextEncoder from a file written by `save_text_encoder`."""
    from safetensors import safe_open

    name = os.path.basename(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text encoder file not found: {path}")
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for damaged files
        raise ValueError(f"{name}: not a readable safetensors file ({err})") from err
    if METADATA_KEY_CONFIG not in metadata or METADATA_KEY_VOCAB not in metadata:
        raise ValueError(f"{name}: not a FlowDiT text encoder (no '{METADATA_KEY_CONFIG}' / "
                         f"'{METADATA_KEY_VOCAB}' metadata)")
    config = TextEncoderConfig(**json.loads(metadata[METADATA_KEY_CONFIG]))
    encoder = TextEncoder(config, json.loads(metadata[METADATA_KEY_VOCAB]))
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{name}: weights do not fit the stored configuration ({err})") from err
    return encoder.to(device).eval()
