"""Megatron-compatible indexed datasets: token sequences in a ``.bin`` file, described by a ``.idx``.

The on-disk format is Megatron-LM's ``MMIDIDX`` layout, byte for byte, so files written here train
in Megatron-LM and files written by Megatron-LM read here:

    .idx:  b"MMIDIDX\\x00\\x00"        magic
           uint64 version = 1
           uint8  dtype code            (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                                         7 float32, 8 uint16)
           uint64 sequence_count
           uint64 document_count        (= number of documents + 1)
           int32[sequence_count]  sequence_lengths   (tokens per sequence)
           int64[sequence_count]  sequence_pointers  (byte offset of each sequence in .bin)
           int64[document_count]  document_indices   (0, then the sequence index ending each document)
    .bin:  the token ids of all sequences, back to back, in the dtype above.

A document is usually one sequence (a whole source file plus ``<|endoftext|>``); Megatron lets a
document hold several (sentence splitting), so both are kept.
"""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megaphi.common.errors import UserError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# magic, version, dtype code, sequence count, document count
_HEADER = struct.Struct("<9sQBQQ")

DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32,
    5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
_CODE_OF_DTYPE = {np.dtype(t): code for code, t in DTYPE_CODES.items()}


class IndexedDatasetError(UserError):
    """A ``.bin/.idx`` pair that cannot be read or written as asked; the message says why."""


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def best_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype for token ids below ``vocab_size`` (Megatron's rule: uint16 below 65500)."""
    if vocab_size <= 0:
        raise IndexedDatasetError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def exists(prefix: str | os.PathLike) -> bool:
    return os.path.isfile(idx_path(prefix)) and os.path.isfile(bin_path(prefix))


def _dtype_code(dtype: np.dtype | type) -> int:
    try:
        return _CODE_OF_DTYPE[np.dtype(dtype)]  # np.dtype raises TypeError on nonsense
    except (KeyError, TypeError):
        names = ", ".join(np.dtype(t).name for t in DTYPE_CODES.values())
        raise IndexedDatasetError(f"dtype {dtype!r} cannot be stored in an indexed dataset; use one of {names}") from None


def _write_index(path: str, dtype: np.dtype, lengths: np.ndarray, document_indices: np.ndarray) -> None:
    lengths = np.ascontiguousarray(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    # pointer[i] = bytes before sequence i; int64 cumsum because the .bin may exceed 2**31 bytes
    np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, _dtype_code(dtype), len(lengths), len(document_indices)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.ascontiguousarray(document_indices, dtype=np.int64).tobytes())


class _GrowableArray:
    """Append-only int64 buffer that doubles its capacity: O(1) amortised appends without Python lists."""

    def __init__(self, dtype: type, initial: Sequence[int] = ()):
        self._data = np.empty(max(1024, len(initial)), dtype=dtype)
        self._size = 0
        self.extend(np.asarray(initial, dtype=dtype))

    def extend(self, values: np.ndarray) -> None:
        need = self._size + len(values)
        if need > len(self._data):
            grown = np.empty(max(need, 2 * len(self._data)), dtype=self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : need] = values
        self._size = need

    def append(self, value: int) -> None:
        self.extend(np.asarray([value], dtype=self._data.dtype))

    def __len__(self) -> int:
        return self._size

    def view(self) -> np.ndarray:
        return self._data[: self._size]


class IndexedDatasetWriter:
    """Stream documents into ``prefix.bin`` as they come; write ``prefix.idx`` on :meth:`finalize`.

    Memory stays bounded by the index (12 bytes per sequence, 8 per document), never the tokens.
    The files are byte-identical to megatron-core's ``IndexedDatasetBuilder`` for the same input.
    Use as a context manager, or call :meth:`finalize`; an unfinalised writer leaves no ``.idx``.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type = np.int32):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(DTYPE_CODES[_dtype_code(dtype)])
        self._limits = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        # a stale .idx next to a new .bin would describe the wrong data until finalize
        if os.path.exists(idx_path(self.prefix)):
            os.remove(idx_path(self.prefix))
        self._bin = open(bin_path(self.prefix), "wb")
        self._lengths = _GrowableArray(np.int32)
        self._document_indices = _GrowableArray(np.int64, [0])
        self.num_tokens = 0

    def _as_tokens(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(tokens)
        if array.dtype == self.dtype:
            return np.ascontiguousarray(array).reshape(-1)
        if array.size and self._limits is not None and array.dtype.kind in "iu":
            low, high = array.min(), array.max()
            if low < self._limits.min or high > self._limits.max:
                raise IndexedDatasetError(
                    f"token id {high if high > self._limits.max else low} does not fit the dataset dtype "
                    f"{self.dtype.name} of {self.prefix}; choose a wider dtype (best_dtype(vocab_size))")
        return np.ascontiguousarray(array, dtype=self.dtype).reshape(-1)

    def add_document(self, tokens: Iterable[int] | np.ndarray, lengths: Sequence[int] | None = None) -> None:
        """Append one document; ``lengths`` splits it into several sequences (default: one)."""
        array = self._as_tokens(tokens)
        lengths = [array.size] if lengths is None else list(lengths)
        if sum(lengths) != array.size:
            raise IndexedDatasetError(f"sequence lengths {lengths} do not add up to the document's {array.size} tokens")
        self._bin.write(memoryview(array).cast("B"))
        self._lengths.extend(np.asarray(lengths, dtype=np.int32))
        self._document_indices.append(len(self._lengths))
        self.num_tokens += array.size

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many one-sequence documents at once: ``tokens`` is their concatenation, ``lengths``
        the token count of each. One write for the whole batch (the fast path for preprocessing)."""
        array = self._as_tokens(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size and (lengths.min() < 0 or lengths.max() > np.iinfo(np.int32).max):
            raise IndexedDatasetError("document lengths must be between 0 and 2**31-1 tokens")
        if int(lengths.sum()) != array.size:
            raise IndexedDatasetError(f"document lengths add up to {int(lengths.sum())} tokens but {array.size} were given")
        self._bin.write(memoryview(array).cast("B"))
        start = len(self._lengths)
        self._lengths.extend(lengths.astype(np.int32))
        self._document_indices.extend(np.arange(start + 1, start + 1 + lengths.size, dtype=np.int64))
        self.num_tokens += array.size

    def add_index(self, prefix: str | os.PathLike) -> None:
        """Append every document of another indexed dataset of the same dtype (shard merging)."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"cannot merge {prefix} (dtype {other.dtype.name}) into {self.prefix} (dtype {self.dtype.name}); "
                "preprocess every shard with the same tokenizer")
        offset = len(self._lengths)
        self._lengths.extend(other.sequence_lengths)
        self._document_indices.extend(other.document_indices[1:] + offset)
        self.num_tokens += other.num_tokens
        del other
        self._bin.flush()
        with open(bin_path(prefix), "rb") as f:
            shutil.copyfileobj(f, self._bin, length=16 << 20)

    @property
    def num_documents(self) -> int:
        return len(self._document_indices) - 1

    def finalize(self) -> None:
        self._bin.close()
        _write_index(idx_path(self.prefix), self.dtype, self._lengths.view(), self._document_indices.view())

    def close_without_index(self) -> None:
        """Abandon the dataset (on error): close and remove the partial ``.bin``."""
        self._bin.close()
        if os.path.exists(bin_path(self.prefix)):
            os.remove(bin_path(self.prefix))

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.close_without_index()


class IndexedDataset:
    """Zero-copy memory-mapped reader of a ``.bin/.idx`` pair (megaphi's or Megatron-LM's).

    ``ds[i]`` is sequence ``i`` as a read-only numpy view of the mapped file; slicing the dataset
    returns a list of views. The constructor validates the header and sizes and raises
    :class:`IndexedDatasetError` on anything that would silently train on garbage.
    Pickles by path, so it can be handed to DataLoader workers.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self._open()

    def _open(self) -> None:
        index_file, data_file = idx_path(self.prefix), bin_path(self.prefix)
        for path in (index_file, data_file):
            if not os.path.isfile(path):
                raise IndexedDatasetError(f"{path} does not exist; build the dataset with `python -m data_tools.preprocess`")
        idx_size = os.path.getsize(index_file)
        if idx_size < _HEADER.size:
            raise IndexedDatasetError(f"{index_file} is truncated ({idx_size} bytes, shorter than the {_HEADER.size}-byte header); rebuild it")
        with open(index_file, "rb") as f:
            magic, version, code, n_seq, n_doc = _HEADER.unpack(f.read(_HEADER.size))
        if magic != INDEX_MAGIC:
            raise IndexedDatasetError(f"{index_file} is not a Megatron indexed dataset index (magic {magic!r}, expected {INDEX_MAGIC!r})")
        if version != INDEX_VERSION:
            raise IndexedDatasetError(f"{index_file} has index version {version}; only version {INDEX_VERSION} is supported")
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{index_file} has unknown dtype code {code}; valid codes are {sorted(DTYPE_CODES)}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = _HEADER.size + n_seq * (4 + 8) + n_doc * 8
        if idx_size != expected:
            hint = " (a multimodal index with sequence modes, which megaphi does not read)" if idx_size == expected + n_seq else ""
            raise IndexedDatasetError(
                f"{index_file} is {idx_size} bytes but its header ({n_seq} sequences, {n_doc} document entries) "
                f"needs {expected}{hint}; the file is truncated or corrupt, rebuild it")

        self._index_map = np.memmap(index_file, mode="r", dtype=np.uint8)
        offset = _HEADER.size
        self.sequence_lengths = np.frombuffer(self._index_map, np.int32, n_seq, offset)
        offset += n_seq * 4
        self.sequence_pointers = np.frombuffer(self._index_map, np.int64, n_seq, offset)
        offset += n_seq * 8
        self.document_indices = np.frombuffer(self._index_map, np.int64, n_doc, offset)

        if n_doc < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != n_seq:
            raise IndexedDatasetError(f"{index_file} has inconsistent document indices (must run from 0 to {n_seq}); rebuild it")
        bin_size = os.path.getsize(data_file)
        expected_bin = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n_seq else 0
        if bin_size != expected_bin:
            raise IndexedDatasetError(
                f"{data_file} is {bin_size} bytes but {index_file} describes {expected_bin}; "
                "the .bin and .idx do not belong together or one is truncated, rebuild them")
        # np.memmap refuses empty files; an empty dataset simply has nothing to map
        self._bin_map = np.memmap(data_file, mode="r", dtype=np.uint8) if bin_size else np.empty(0, np.uint8)
        self.num_tokens = bin_size // self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i`` (to its end when length is None)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {self.prefix} with {n} sequences")
        i %= n
        size = int(self.sequence_lengths[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"tokens [{offset}, {offset + length}) out of range for sequence {i} of length {size}")
        start = int(self.sequence_pointers[i]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin_map, self.dtype, length, start)

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self.get(j) for j in range(*i.indices(len(self)))]
        return self.get(int(i))

    def tokens(self) -> np.ndarray:
        """The whole token stream as one read-only view."""
        return np.frombuffer(self._bin_map, self.dtype, self.num_tokens, 0)

    def max_token_id(self, chunk_tokens: int = 1 << 26) -> int:
        """Largest token id in the dataset (-1 when empty), scanned in chunks to keep memory flat."""
        stream, best = self.tokens(), -1
        for start in range(0, stream.size, chunk_tokens):
            best = max(best, int(stream[start : start + chunk_tokens].max()))
        return best

    def check_vocab(self, vocab_size: int) -> None:
        """Raise when a token id is outside a model vocabulary of ``vocab_size`` entries."""
        stream = self.tokens()
        if stream.size == 0:
            return
        top, low = self.max_token_id(), int(stream.min())
        if top >= vocab_size or low < 0:
            bad = top if top >= vocab_size else low
            position = int(np.argmax(stream == bad))
            sequence = int(np.searchsorted(self.sequence_pointers, position * self.dtype.itemsize, side="right")) - 1
            raise IndexedDatasetError(
                f"{self.prefix} holds token id {bad} (first in sequence {sequence}) but the model vocabulary has "
                f"{vocab_size} entries; preprocess with the model's tokenizer or enlarge the model's vocab_size")

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.prefix = state["prefix"]
        self._open()

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, sequences={len(self)}, documents={self.num_documents}, tokens={self.num_tokens}, dtype={self.dtype.name})"


def merge_datasets(prefixes: Sequence[str | os.PathLike], output_prefix: str | os.PathLike) -> IndexedDataset:
    """Concatenate several indexed datasets (e.g. per-shard preprocessing outputs) in order."""
    if not prefixes:
        raise IndexedDatasetError("nothing to merge: give at least one input prefix")
    for prefix in prefixes:
        if os.path.abspath(os.fspath(prefix)) == os.path.abspath(os.fspath(output_prefix)):
            raise IndexedDatasetError(f"the output prefix {output_prefix} is also an input; choose another")
    dtype = IndexedDataset(prefixes[0]).dtype
    writer = IndexedDatasetWriter(output_prefix, dtype)
    try:
        for prefix in prefixes:
            writer.add_index(prefix)
    except BaseException:
        writer.close_without_index()
        raise
    writer.finalize()
    return IndexedDataset(output_prefix)
