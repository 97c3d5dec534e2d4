"""MinHash over word n-gram shingles: the one definition of "near duplicate" in megaphi.

A document's shingles are its word n-grams (words are ``\\w+`` runs, so whitespace, punctuation and
reformatting do not count; a text shorter than ``ngram`` words is one shingle of all its words). Each
shingle is hashed with xxhash32 and the signature is, per hash function ``h(x) = (a*x + b) mod (2^61 - 1)``
truncated to 32 bits (the universal hashing datatrove and datasketch use), the minimum over the shingles.
Two signatures agree at a position with probability equal to the Jaccard similarity of the shingle sets,
so the share of equal positions estimates it, with standard deviation ``sqrt(J (1 - J) / hashes)``
(0.035 at J = 0.8 with 128 hashes).

Locality-sensitive hashing cuts the signature into ``bands`` of ``rows`` hashes; two documents become
candidates when all hashes of at least one band agree, with probability (the S-curve)

    P(candidate | J) = 1 - (1 - J^rows)^bands

:func:`lsh_bands` picks the largest ``rows`` (the fewest dissimilar candidates) whose S-curve still
misses at most ``MAX_MISS_AT_THRESHOLD`` of the pairs exactly at the threshold, with
``bands = hashes // rows`` (the LSH uses the first ``bands * rows`` hashes, the estimate all of them). Above the threshold misses fall fast (threshold 0.8, 128 hashes: 18 bands of
7 rows; P(candidate) = 0.986 at J = 0.8, 0.99999 at 0.9, 1 - 4e-10 at 0.95), and every candidate is then
confirmed by its estimated Jaccard, so that dissimilar candidates cost time, never a kept document.

The same functions serve the on-disk datatrove stages (:mod:`data_tools.dedup`) and the in-memory
:class:`Deduplicator` used where documents arrive one at a time (synthetic exercises).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from datatrove.utils.hashing import HashConfig, create_hash_func

from megaphi.common.errors import UserError

WORD = re.compile(r"\w+")
MERSENNE_PRIME = np.uint64((1 << 61) - 1)
HASH_CONFIG = HashConfig(precision=32, hash_fc="xxhash")
MAX_MISS_AT_THRESHOLD = 0.05
_SHINGLE_CHUNK = 4096  # shingles hashed at once: bounds the (shingles x hashes) matrix of a huge file


class DedupError(UserError):
    """Inputs or parameters that deduplication cannot work with."""


@dataclass(frozen=True)
class DedupParams:
    """What makes two documents near duplicates."""

    threshold: float = 0.8  # estimated Jaccard similarity of the shingle sets
    num_perm: int = 128  # hash functions available; the signature uses bands * rows <= num_perm of them
    ngram: int = 5  # words per shingle
    text_key: str = "text"

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise DedupError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16:
            raise DedupError(f"--num-perm must be at least 16, got {self.num_perm}")
        if self.ngram < 1:
            raise DedupError(f"--ngram must be at least 1, got {self.ngram}")


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for ``threshold``: the largest ``rows`` whose S-curve misses at most
    ``MAX_MISS_AT_THRESHOLD`` of the pairs at the threshold (see the module's docstring)."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if (1.0 - threshold**rows) ** bands <= MAX_MISS_AT_THRESHOLD:
            return bands, rows
    return num_perm, 1  # a threshold this low makes every shared shingle a candidate


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The S-curve: the chance that two documents of this Jaccard similarity share a band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def normalize(text: str) -> str:
    """Text with trailing spaces and blank lines removed: reformatting alone does not make a new file."""
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def shingles(text: str, ngram: int) -> list[bytes]:
    """Word n-grams of the text; a text shorter than ``ngram`` words is one shingle of all its words."""
    words = WORD.findall(text)
    if len(words) < ngram:
        return [" ".join(words).encode("utf-8", "surrogatepass")]
    return [" ".join(words[i : i + ngram]).encode("utf-8", "surrogatepass") for i in range(len(words) - ngram + 1)]


class MinHasher:
    """Signatures of ``hashes`` universal hash functions drawn from ``seed`` (same seed, same functions
    on every task and machine)."""

    def __init__(self, hashes: int, ngram: int, seed: int = 1):
        self.hashes, self.ngram = hashes, ngram
        generator = np.random.RandomState(seed)
        self._a = generator.randint(1, MERSENNE_PRIME, dtype=np.uint64, size=(1, hashes))
        self._b = generator.randint(0, MERSENNE_PRIME, dtype=np.uint64, size=(1, hashes))
        self._hash = create_hash_func(HASH_CONFIG, bytes)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """The shingles' 32-bit hashes as a (shingles, 1) uint64 column."""
        return np.fromiter(map(self._hash, shingles(text, self.ngram)), dtype=np.uint64).reshape(-1, 1)

    def signature_of_hashes(self, hashed: np.ndarray) -> np.ndarray:
        signature = np.full(self.hashes, np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(hashed), _SHINGLE_CHUNK):
            permuted = (hashed[start : start + _SHINGLE_CHUNK] * self._a + self._b) % MERSENNE_PRIME
            np.minimum(signature, (permuted & np.uint64(0xFFFFFFFF)).min(axis=0).astype(np.uint32), out=signature)
        return signature

    def signature(self, text: str) -> np.ndarray:
        """The text's MinHash signature: ``hashes`` uint32 values."""
        return self.signature_of_hashes(self.shingle_hashes(text))


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)


@functools.lru_cache(maxsize=8)
def _hasher(num_perm: int, ngram: int) -> MinHasher:
    return MinHasher(num_perm, ngram)


def signature(text: str, num_perm: int = 128, ngram: int = 5) -> np.ndarray:
    """The signature the dedup stage computes for ``text`` with these settings."""
    return _hasher(num_perm, ngram).signature(text)


class Deduplicator:
    """In-memory decisions for documents that arrive one at a time: ``check(doc_id, key, sig)`` says
    whether a document is new and, if not, which kept document it duplicates. The same rule as the
    dedup stage: an exact match of the normalised text, else an LSH candidate whose estimated Jaccard
    reaches the threshold (the highest one); kept documents are remembered, removed ones are not.
    Memory grows with what is kept: for corpora, use the dedup stage (:mod:`data_tools.dedup`)."""

    def __init__(self, params: DedupParams):
        params.validate()
        self.params = params
        self.bands, self.rows = lsh_bands(params.threshold, params.num_perm)
        self._exact: dict[bytes, str] = {}
        self._buckets: list[dict[bytes, list[str]]] = [{} for _ in range(self.bands)]
        self._signatures: dict[str, np.ndarray] = {}

    def _band_keys(self, sig: np.ndarray) -> list[bytes]:
        if len(sig) != self.params.num_perm:
            raise DedupError(f"a signature of {len(sig)} hashes given to a deduplicator of {self.params.num_perm}")
        return [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def check(self, doc_id: str, key: bytes, sig: np.ndarray) -> dict[str, Any] | None:
        """None when the document is kept, else ``{"reason", "duplicate_of", "jaccard"}``."""
        if key in self._exact:
            return {"reason": "exact", "duplicate_of": self._exact[key], "jaccard": 1.0}
        bands = self._band_keys(sig)
        best: tuple[str, float] | None = None
        for bucket, band in zip(self._buckets, bands):
            for other in bucket.get(band, ()):
                jaccard = estimated_jaccard(sig, self._signatures[other])
                if jaccard >= self.params.threshold and (best is None or jaccard > best[1]):
                    best = (other, jaccard)
        if best is not None:
            return {"reason": "near", "duplicate_of": best[0], "jaccard": round(best[1], 4)}
        if doc_id in self._signatures:
            raise DedupError(f"document id {doc_id!r} occurs twice in the input; ids must be unique")
        self._exact[key] = doc_id
        for bucket, band in zip(self._buckets, bands):
            bucket.setdefault(band, []).append(doc_id)
        self._signatures[doc_id] = sig
        return None
