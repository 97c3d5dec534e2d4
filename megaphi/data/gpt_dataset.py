"""Packed GPT training samples: ``seq_len + 1`` token windows over the concatenated document stream.

The documents of an indexed dataset (a range of them, for a split) are laid end to end in a
shuffled order, once per epoch, forming one token stream. Sample ``k`` is the window
``stream[k * seq_len : (k + 1) * seq_len + 1]``: inputs are its first ``seq_len`` tokens, labels the
last ``seq_len``, and consecutive samples share one token, so every token of an epoch is predicted
exactly once. Samples are then shuffled, within each epoch, so the first epoch's worth of training
steps sees every token of the data once before any token is repeated.

Three index arrays define the order (the same arrays, with the same meaning, as megatron-core's
``GPTDataset``; for one epoch they are identical to its arrays for the same seed):

- ``document_index`` [num_epochs * num_documents] int32: the documents of the stream, in order;
  each epoch is an independent permutation of the split's documents.
- ``sample_index`` [num_samples + 1, 2]: for the first token of each sample (and one past the
  last), its position in ``document_index`` and its offset inside that document.
- ``shuffle_index`` [num_samples]: sample ``i`` of the dataset is stream window ``shuffle_index[i]``.

They are built with vectorised numpy (cumulative sums and a histogram, no per-document Python
loop), once, and cached on disk (see :mod:`megaphi.data.cache`), keyed by a hash of the document
lengths, the document range, ``seq_len``, the number of epochs and the seed.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch.utils.data

from megaphi.common.errors import UserError
from megaphi.data.cache import IndexCache, checksum
from megaphi.data.indexed import IndexedDataset

# bump when the index-building algorithm changes, so old caches are not trusted
INDEX_VERSION = 1


class DatasetConfigError(UserError):
    """Dataset parameters that cannot produce training samples; the message says what to change."""


def num_epochs_for(num_samples: int | None, tokens_per_epoch: int, seq_len: int) -> int:
    """Epochs of the stream needed for ``num_samples`` windows (each needs ``seq_len`` new tokens,
    plus one extra token at the very end)."""
    if num_samples is None:
        return 1
    return max(1, -(-(num_samples * seq_len + 1) // tokens_per_epoch))


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState) -> np.ndarray:
    """``num_epochs`` back-to-back independent permutations of ``documents`` (int32)."""
    n = len(documents)
    document_index = np.empty(num_epochs * n, dtype=np.int32)
    for epoch in range(num_epochs):
        block = document_index[epoch * n : (epoch + 1) * n]
        block[:] = documents
        rng.shuffle(block)
    return document_index


def build_sample_index(
    sequence_lengths: np.ndarray, document_index: np.ndarray, num_epochs: int, seq_len: int
) -> np.ndarray:
    """[num_samples + 1, 2] (document_index position, offset) of stream positions ``k * seq_len``.

    Position ``k * seq_len`` lies in document ``j`` of the stream when exactly ``j`` documents end
    at or before it. Document ``j`` ends before the start of sample ``ceil(end_j / seq_len)``, so a
    histogram of those sample numbers, cumulatively summed, gives every sample's document in a few
    linear numpy passes (no search, no per-document loop; empty documents fall out naturally). Done
    one epoch at a time so memory stays at one epoch's cumulative lengths.
    """
    n = len(document_index) // num_epochs
    # offsets are below a document length (int32); positions in document_index decide the dtype
    dtype = np.int32 if len(document_index) <= np.iinfo(np.int32).max else np.int64
    for epoch in range(num_epochs):
        lengths = np.take(sequence_lengths, document_index[epoch * n : (epoch + 1) * n])
        ends = np.cumsum(lengths, dtype=np.int64)
        if epoch == 0:
            tokens_per_epoch = int(ends[-1])
            num_samples = (num_epochs * tokens_per_epoch - 1) // seq_len
            sample_index = np.empty((num_samples + 1, 2), dtype=dtype)
        else:
            ends += epoch * tokens_per_epoch
        # samples starting in this epoch: k * seq_len in [epoch * tokens, (epoch + 1) * tokens)
        first = -(-epoch * tokens_per_epoch // seq_len)
        last = min(num_samples + 1, -(-(epoch + 1) * tokens_per_epoch // seq_len))
        # ceil(end / seq_len) - first, on one temporary (these arrays are the memory peak)
        sample_after_end = ends + (seq_len - 1 - first * seq_len)
        if seq_len & (seq_len - 1):
            sample_after_end //= seq_len
        else:  # power-of-two context lengths (the usual case): a shift is several times cheaper
            sample_after_end >>= seq_len.bit_length() - 1
        doc = np.cumsum(np.bincount(sample_after_end, minlength=last - first)[: last - first])
        del sample_after_end
        sample_index[first:last, 0] = doc + epoch * n
        starts = np.arange(first, last, dtype=np.int64) * seq_len
        sample_index[first:last, 1] = starts - (ends[doc] - lengths[doc])
    return sample_index


def build_shuffle_index(
    num_samples: int, tokens_per_epoch: int, num_epochs: int, seq_len: int, rng: np.random.RandomState
) -> np.ndarray:
    """Permutation of ``range(num_samples)`` that shuffles each epoch's samples among themselves.

    Sample ``k`` belongs to the epoch in which it starts; epoch ``e`` starts at sample
    ``ceil(e * tokens_per_epoch / seq_len)``.
    """
    dtype = np.uint32 if num_samples < np.iinfo(np.uint32).max - 1 else np.int64
    shuffle_index = np.arange(num_samples, dtype=dtype)
    for epoch in range(num_epochs):
        begin = min(num_samples, -(-epoch * tokens_per_epoch // seq_len))
        end = min(num_samples, -(-(epoch + 1) * tokens_per_epoch // seq_len))
        rng.shuffle(shuffle_index[begin:end])
    return shuffle_index


class GPTDataset(torch.utils.data.Dataset):
    """Shuffled ``seq_len + 1`` token windows over documents ``[begin, end)`` of an indexed dataset.

    Args:
        data: an :class:`IndexedDataset` or its path prefix. Each sequence of the ``.idx`` counts as
            a document (preprocessing writes one sequence per source file, ``<|endoftext|>`` ended).
        seq_len: model context length; samples have ``seq_len + 1`` tokens.
        seed: shuffling seed; the sample order is a deterministic function of it.
        num_samples: samples needed (e.g. train steps x global batch); enough epochs are built to
            provide them, and ``len()`` is every sample of those epochs (>= num_samples). None: one epoch.
        documents: ``(begin, end)`` document range (a split); None: all documents.
        cache_dir: where the index arrays are cached; default ``<data dir>/index-cache``.
        name: label of this split in cache file names (e.g. "train", "valid").

    ``dataset[i]`` is an int64 numpy array of ``seq_len + 1`` tokens. Construction is collective
    under torch.distributed (rank 0 builds the cache, the others wait, then everyone loads it).
    ``cache_status`` says whether the indices were "loaded", "built" or "rebuilt: <why>".
    """

    def __init__(
        self,
        data: IndexedDataset | str | os.PathLike,
        *,
        seq_len: int,
        seed: int = 1234,
        num_samples: int | None = None,
        documents: Sequence[int] | None = None,
        cache_dir: str | os.PathLike | None = None,
        name: str = "train",
    ):
        self.indexed = data if isinstance(data, IndexedDataset) else IndexedDataset(data)
        if seq_len < 1:
            raise DatasetConfigError(f"seq_len must be at least 1, got {seq_len}")
        if num_samples is not None and num_samples < 0:
            raise DatasetConfigError(f"num_samples must be non-negative, got {num_samples}")
        self.seq_len, self.seed, self.name = int(seq_len), int(seed), name
        num_docs = len(self.indexed)
        begin, end = (0, num_docs) if documents is None else (int(documents[0]), int(documents[1]))
        if not 0 <= begin <= end <= num_docs:
            raise DatasetConfigError(
                f"document range [{begin}, {end}) is outside {self.indexed.prefix}, which has {num_docs} documents"
            )
        self.documents = (begin, end)
        lengths = self.indexed.sequence_lengths[begin:end]
        self.tokens_per_epoch = int(lengths.sum(dtype=np.int64))
        if self.tokens_per_epoch <= seq_len:
            raise DatasetConfigError(
                f"documents [{begin}, {end}) of {self.indexed.prefix} hold {self.tokens_per_epoch} tokens, fewer than "
                f"one sample of seq_len + 1 = {seq_len + 1}; use more data, a larger split or a shorter seq_len"
            )
        self.num_epochs = num_epochs_for(num_samples, self.tokens_per_epoch, self.seq_len)

        params = {
            "version": INDEX_VERSION,
            "documents": [begin, end],
            "lengths": [len(lengths), self.tokens_per_epoch, checksum(lengths)],
            "seq_len": self.seq_len,
            "num_epochs": self.num_epochs,
            "seed": self.seed,
        }
        if cache_dir is None:
            cache_dir = os.path.join(os.path.dirname(os.path.abspath(self.indexed.prefix)), "index-cache")
        self._cache = IndexCache(cache_dir, f"{os.path.basename(self.indexed.prefix)}-{name}", params)
        try:
            self._set_arrays(self._cache.load_or_build(self._build_indices))
        except OSError as e:
            raise DatasetConfigError(
                f"cannot write the dataset index cache in {cache_dir} ({e.strerror or e}); "
                "point cache_dir (data.cache_dir) at a writable directory"
            ) from None
        self.cache_status = self._cache.status

    def _build_indices(self) -> dict[str, np.ndarray]:
        rng = np.random.RandomState(self.seed)
        documents = np.arange(*self.documents, dtype=np.int32)
        document_index = build_document_index(documents, self.num_epochs, rng)
        sample_index = build_sample_index(self.indexed.sequence_lengths, document_index, self.num_epochs, self.seq_len)
        shuffle_index = build_shuffle_index(
            len(sample_index) - 1, self.tokens_per_epoch, self.num_epochs, self.seq_len, rng
        )
        return {"document_index": document_index, "sample_index": sample_index, "shuffle_index": shuffle_index}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]

    @property
    def samples_per_epoch(self) -> float:
        return self.tokens_per_epoch / self.seq_len

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def window(self, k: int) -> np.ndarray:
        """Stream window ``k`` (unshuffled): tokens ``[k * seq_len, (k + 1) * seq_len]`` of the stream."""
        doc_begin, offset_begin = (int(v) for v in self.sample_index[k])
        doc_end, offset_end = (int(v) for v in self.sample_index[k + 1])
        get, order = self.indexed.get, self.document_index
        if doc_begin == doc_end:
            return get(int(order[doc_begin]), offset_begin, offset_end - offset_begin + 1).astype(np.int64)
        parts = [get(int(order[doc_begin]), offset_begin)]
        parts += [get(int(order[d])) for d in range(doc_begin + 1, doc_end)]
        parts.append(get(int(order[doc_end]), 0, offset_end + 1))
        return np.concatenate(parts, dtype=np.int64)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a dataset of {len(self)} samples")
        return self.window(int(self.shuffle_index[i]))

    # DataLoader workers get the paths, not copies of the (memory-mapped) arrays
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("document_index", "sample_index", "shuffle_index"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._set_arrays(
            {
                key: np.load(self._cache.array_path(key), mmap_mode="r")
                for key in ("document_index", "sample_index", "shuffle_index")
            }
        )

    def __repr__(self) -> str:
        return (
            f"GPTDataset({self.indexed.prefix!r}, name={self.name!r}, documents={self.documents}, "
            f"seq_len={self.seq_len}, epochs={self.num_epochs}, samples={len(self)})"
        )
