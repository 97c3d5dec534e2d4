"""Vocabulary padding, shared by the model and the torch-free data tools."""

from __future__ import annotations


def padded_vocab_size(vocab_size: int, divisible_by: int = 128, tensor_parallel_size: int = 1) -> int:
    """Embedding rows a model needs for ``vocab_size`` tokens: rounded up so that each TP rank holds
    an equal, ``divisible_by``-aligned slice (Megatron's rule; phi-1's 50295 tokens at TP 8 give 51200)."""
    multiple = divisible_by * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple
