"""Indexed datasets whose every token is its own position in the file, so tests can trace a token
back to exactly one place in the data."""

from __future__ import annotations

import numpy as np

from megaphi.data.indexed import IndexedDatasetWriter


def write_numbered_corpus(prefix, lengths) -> list[np.ndarray]:
    """Write documents of ``lengths`` holding tokens 0, 1, 2, ... in file order; return them."""
    lengths = np.asarray(lengths, dtype=np.int64)
    tokens = np.arange(lengths.sum(), dtype=np.int32)
    with IndexedDatasetWriter(prefix, np.int32) as writer:
        writer.add_documents(tokens, lengths)
    return np.split(tokens, np.cumsum(lengths)[:-1])


def random_lengths(n: int, seed: int = 0, low: int = 1, high: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, n)
