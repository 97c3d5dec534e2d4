"""PhiConfig: transformers' PhiConfig field names plus megaphi's training switches, and named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_BACKENDS = ("auto", "flash", "sdpa", "eager")
# gelu_new (phi-1) is GELU's tanh approximation; "gelu" is the exact erf form.
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu")
# How the training loss is computed (megaphi.parallel.cross_entropy.resolve_cross_entropy).
CROSS_ENTROPY_IMPLS = ("auto", "fused", "liger", "unfused")
LAYER_NORM_BACKENDS = ("auto", "torch", "apex")


@dataclass
class PhiConfig:
    vocab_size: int = 51200
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    max_position_embeddings: int = 2048
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # megaphi extras
    attn_backend: str = "auto"
    cross_entropy: str = "auto"  # fused with the lm_head (chunked, or liger-kernel's on CUDA), or "unfused"
    layer_norm_backend: str = "auto"  # apex's fused LayerNorm where installed, else torch's
    activation_checkpointing: bool = False
    make_vocab_size_divisible_by: int = 128

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "make_vocab_size_divisible_by",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PhiConfig.{name}={value!r} must be a positive integer")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"PhiConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_dim % 2 != 0:
            raise ValueError(
                f"PhiConfig.partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1] and "
                f"give an even number of rotary dims per head (head_dim={self.head_dim})"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"PhiConfig.{name}={getattr(self, name)} must be in [0, 1)")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"PhiConfig.hidden_act={self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        if self.attn_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"PhiConfig.attn_backend={self.attn_backend!r} must be one of {ATTENTION_BACKENDS}")
        if self.cross_entropy not in CROSS_ENTROPY_IMPLS:
            raise ValueError(f"PhiConfig.cross_entropy={self.cross_entropy!r} must be one of {CROSS_ENTROPY_IMPLS}")
        if self.layer_norm_backend not in LAYER_NORM_BACKENDS:
            raise ValueError(
                f"PhiConfig.layer_norm_backend={self.layer_norm_backend!r} must be one of {LAYER_NORM_BACKENDS}"
            )
        if self.tie_word_embeddings:
            raise ValueError("PhiConfig.tie_word_embeddings=True is not supported: phi has an untied lm_head")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PhiConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PhiConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)


_PRESETS: dict[str, dict[str, Any]] = {
    # phi-1 as published (1,418,270,720 parameters); the paper trained with 0.1 attention and residual dropout.
    "phi-1": dict(
        vocab_size=51200,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        max_position_embeddings=2048,
        resid_pdrop=0.1,
        attention_dropout=0.1,
    ),
    "phi-1-small": dict(
        vocab_size=51200,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=20,
        num_attention_heads=16,
        max_position_embeddings=2048,
        resid_pdrop=0.1,
        attention_dropout=0.1,
    ),
    # Trains on two CPU cores; set vocab_size to the tokenizer's before training a real tokenizer.
    "phi-tiny": dict(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
    ),
}


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str, **overrides: Any) -> PhiConfig:
    """A fresh PhiConfig for a named preset, with optional field overrides."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {preset_names()}")
    return PhiConfig.from_dict({**_PRESETS[name], **overrides})
