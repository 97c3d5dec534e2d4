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

Next to the pair, megaphi's writer records the token-id range in a small JSON sidecar,
``{prefix}.stats.json`` (:class:`TokenStats`), so that a trainer can check the ids against its
vocabulary by reading a header instead of the whole token stream. The ``.idx`` stays Megatron's,
byte for byte. A dataset written by another tool has no sidecar: :meth:`IndexedDataset.scan_token_stats`
computes the same numbers in one pass, and ``python -m data_tools.preprocess stats`` writes them.

(Over 400 lines on purpose: the format's writer, reader and sidecar are one contract, and the
writer fills the sidecar as it streams the tokens.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# magic, version, dtype code, sequence count, document count
_HEADER = struct.Struct("<9sQBQQ")

DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF_DTYPE = {np.dtype(t): code for code, t in DTYPE_CODES.items()}


class IndexedDatasetError(UserError):
    """A ``.bin/.idx`` pair that cannot be read or written as asked; the message says why."""


def idx_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def bin_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def stats_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.stats.json"


_STATS_FORMAT = "megaphi-token-stats"
_STATS_VERSION = 1
_FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of the .idx: constant time, whatever the dataset size


class MissingTokenStats(IndexedDatasetError):
    """A dataset has no usable token-stats sidecar (none written, or it describes other files)."""


@dataclass(frozen=True)
class TokenStats:
    """What the trainer needs to know about a dataset's token ids without reading them."""

    num_tokens: int
    min_token_id: int | None  # None for an empty dataset
    max_token_id: int | None

    @staticmethod
    def of(tokens: np.ndarray) -> "TokenStats":
        if tokens.size == 0:
            return TokenStats(0, None, None)
        return TokenStats(int(tokens.size), int(tokens.min()), int(tokens.max()))

    def merged(self, other: "TokenStats") -> "TokenStats":
        ids = [
            v for v in (self.min_token_id, self.max_token_id, other.min_token_id, other.max_token_id) if v is not None
        ]
        return TokenStats(self.num_tokens + other.num_tokens, min(ids) if ids else None, max(ids) if ids else None)


def _files_fingerprint(prefix: str) -> dict[str, object]:
    """Sizes of the pair and a hash of both ends of the .idx: what ties a sidecar to the files it describes.

    A rebuilt dataset changes its document lengths, so its .idx differs; hashing only the ends keeps
    reading the sidecar independent of the dataset's size.
    """
    index_file = idx_path(prefix)
    size = os.path.getsize(index_file)
    digest = hashlib.blake2b(digest_size=16)
    with open(index_file, "rb") as f:
        digest.update(f.read(_FINGERPRINT_SPAN))
        if size > _FINGERPRINT_SPAN:
            f.seek(max(_FINGERPRINT_SPAN, size - _FINGERPRINT_SPAN))
            digest.update(f.read())
    return {"idx_bytes": size, "bin_bytes": os.path.getsize(bin_path(prefix)), "idx_digest": digest.hexdigest()}


def write_token_stats(prefix: str | os.PathLike, stats: TokenStats) -> None:
    """Write ``{prefix}.stats.json`` for the finished pair at ``prefix`` (atomically: a reader sees all or nothing)."""
    prefix = os.fspath(prefix)
    record = {"format": _STATS_FORMAT, "version": _STATS_VERSION, **asdict(stats), **_files_fingerprint(prefix)}
    atomic_write_text(stats_path(prefix), json.dumps(record, indent=1) + "\n")


def read_token_stats(prefix: str | os.PathLike) -> TokenStats:
    """The sidecar's statistics; raises :class:`MissingTokenStats` (saying why) when there is none that fits."""
    prefix = os.fspath(prefix)
    path = stats_path(prefix)
    if not os.path.isfile(path):
        raise MissingTokenStats(f"{path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("format") != _STATS_FORMAT or record.get("version") != _STATS_VERSION:
            raise MissingTokenStats(f"{path} is not a version-{_STATS_VERSION} {_STATS_FORMAT} file")
        stats = TokenStats(record["num_tokens"], record["min_token_id"], record["max_token_id"])
        fingerprint = {key: record[key] for key in ("idx_bytes", "bin_bytes", "idx_digest")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, MissingTokenStats):
            raise
        raise MissingTokenStats(f"{path} is unreadable ({e.__class__.__name__}: {e})") from None
    if fingerprint != _files_fingerprint(prefix):
        raise MissingTokenStats(
            f"{path} describes other files than {prefix}.bin/.idx (they were rebuilt or replaced since)"
        )
    return stats


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
        raise IndexedDatasetError(
            f"dtype {dtype!r} cannot be stored in an indexed dataset; use one of {names}"
        ) from None


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
        self._data: np.ndarray = np.empty(max(1024, len(initial)), dtype=dtype)
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
        # a stale .idx (or token stats) next to a new .bin would describe the wrong data until finalize
        for stale in (idx_path(self.prefix), stats_path(self.prefix)):
            if os.path.exists(stale):
                os.remove(stale)
        self._bin = open(bin_path(self.prefix), "wb")
        self._lengths = _GrowableArray(np.int32)
        self._document_indices = _GrowableArray(np.int64, [0])
        self.stats = TokenStats(0, None, None)

    @property
    def num_tokens(self) -> int:
        return self.stats.num_tokens

    def _as_tokens(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(tokens)
        if array.dtype == self.dtype:
            return np.ascontiguousarray(array).reshape(-1)
        if array.size and self._limits is not None and array.dtype.kind in "iu":
            low, high = array.min(), array.max()
            if low < self._limits.min or high > self._limits.max:
                raise IndexedDatasetError(
                    f"token id {high if high > self._limits.max else low} does not fit the dataset dtype "
                    f"{self.dtype.name} of {self.prefix}; choose a wider dtype (best_dtype(vocab_size))"
                )
        return np.ascontiguousarray(array, dtype=self.dtype).reshape(-1)

    def add_document(self, tokens: Iterable[int] | np.ndarray, lengths: Sequence[int] | None = None) -> None:
        """Append one document; ``lengths`` splits it into several sequences (default: one)."""
        array = self._as_tokens(tokens)
        lengths = [array.size] if lengths is None else list(lengths)
        if sum(lengths) != array.size:
            raise IndexedDatasetError(f"sequence lengths {lengths} do not add up to the document's {array.size} tokens")
        self._bin.write(array.data.cast("B"))
        self._lengths.extend(np.asarray(lengths, dtype=np.int32))
        self._document_indices.append(len(self._lengths))
        self.stats = self.stats.merged(TokenStats.of(array))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many one-sequence documents at once: ``tokens`` is their concatenation, ``lengths``
        the token count of each. One write for the whole batch (the fast path for preprocessing)."""
        array = self._as_tokens(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size and (lengths.min() < 0 or lengths.max() > np.iinfo(np.int32).max):
            raise IndexedDatasetError("document lengths must be between 0 and 2**31-1 tokens")
        if int(lengths.sum()) != array.size:
            raise IndexedDatasetError(
                f"document lengths add up to {int(lengths.sum())} tokens but {array.size} were given"
            )
        self._bin.write(array.data.cast("B"))
        start = len(self._lengths)
        self._lengths.extend(lengths.astype(np.int32))
        self._document_indices.extend(np.arange(start + 1, start + 1 + lengths.size, dtype=np.int64))
        self.stats = self.stats.merged(TokenStats.of(array))

    def add_index(self, prefix: str | os.PathLike) -> None:
        """Append every document of another indexed dataset of the same dtype (shard merging)."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"cannot merge {prefix} (dtype {other.dtype.name}) into {self.prefix} (dtype {self.dtype.name}); "
                "preprocess every shard with the same tokenizer"
            )
        offset = len(self._lengths)
        self._lengths.extend(other.sequence_lengths)
        self._document_indices.extend(other.document_indices[1:] + offset)
        try:
            other_stats = read_token_stats(prefix)
        except MissingTokenStats:
            other_stats = other.scan_token_stats()  # its tokens are read for the copy below anyway
        self.stats = self.stats.merged(other_stats)
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
        write_token_stats(self.prefix, self.stats)

    def close_without_index(self) -> None:
        """Abandon the dataset (on error): close and remove the partial ``.bin``."""
        self._bin.close()
        if os.path.exists(bin_path(self.prefix)):
            os.remove(bin_path(self.prefix))

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
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
                raise IndexedDatasetError(
                    f"{path} does not exist; build the dataset with `python -m data_tools.preprocess`"
                )
        idx_size = os.path.getsize(index_file)
        if idx_size < _HEADER.size:
            raise IndexedDatasetError(
                f"{index_file} is truncated ({idx_size} bytes, shorter than the {_HEADER.size}-byte header); rebuild it"
            )
        with open(index_file, "rb") as f:
            magic, version, code, n_seq, n_doc = _HEADER.unpack(f.read(_HEADER.size))
        if magic != INDEX_MAGIC:
            raise IndexedDatasetError(
                f"{index_file} is not a Megatron indexed dataset index (magic {magic!r}, expected {INDEX_MAGIC!r})"
            )
        if version != INDEX_VERSION:
            raise IndexedDatasetError(
                f"{index_file} has index version {version}; only version {INDEX_VERSION} is supported"
            )
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(
                f"{index_file} has unknown dtype code {code}; valid codes are {sorted(DTYPE_CODES)}"
            )
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = _HEADER.size + n_seq * (4 + 8) + n_doc * 8
        if idx_size != expected:
            hint = (
                " (a multimodal index with sequence modes, which megaphi does not read)"
                if idx_size == expected + n_seq
                else ""
            )
            raise IndexedDatasetError(
                f"{index_file} is {idx_size} bytes but its header ({n_seq} sequences, {n_doc} document entries) "
                f"needs {expected}{hint}; the file is truncated or corrupt, rebuild it"
            )

        self._index_map = np.memmap(index_file, mode="r", dtype=np.uint8)
        offset = _HEADER.size
        self.sequence_lengths = np.frombuffer(self._index_map, np.int32, n_seq, offset)
        offset += n_seq * 4
        self.sequence_pointers = np.frombuffer(self._index_map, np.int64, n_seq, offset)
        offset += n_seq * 8
        self.document_indices = np.frombuffer(self._index_map, np.int64, n_doc, offset)

        if n_doc < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != n_seq:
            raise IndexedDatasetError(
                f"{index_file} has inconsistent document indices (must run from 0 to {n_seq}); rebuild it"
            )
        bin_size = os.path.getsize(data_file)
        expected_bin = (
            int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n_seq else 0
        )
        if bin_size != expected_bin:
            raise IndexedDatasetError(
                f"{data_file} is {bin_size} bytes but {index_file} describes {expected_bin}; "
                "the .bin and .idx do not belong together or one is truncated, rebuild them"
            )
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

    def scan_token_stats(self, chunk_tokens: int = 1 << 26) -> TokenStats:
        """Token count and id range from one pass over the token stream, in chunks to keep memory flat.

        Reads the whole ``.bin``: prefer :meth:`token_stats`, which reads the sidecar when there is one.
        """
        stream, stats = self.tokens(), TokenStats(0, None, None)
        for start in range(0, stream.size, chunk_tokens):
            stats = stats.merged(TokenStats.of(stream[start : start + chunk_tokens]))
        return stats

    def token_stats(self) -> TokenStats:
        """The sidecar's statistics, without reading tokens; raises :class:`MissingTokenStats` when there is none."""
        return read_token_stats(self.prefix)

    def max_token_id(self) -> int:
        """Largest token id in the dataset (-1 when empty), from the sidecar when there is one, else scanned."""
        try:
            stats = self.token_stats()
        except MissingTokenStats:
            stats = self.scan_token_stats()
        return -1 if stats.max_token_id is None else stats.max_token_id

    def check_vocab(self, vocab_size: int, stats: TokenStats | None = None) -> None:
        """Raise when a token id is outside a model vocabulary of ``vocab_size`` entries.

        ``stats`` (from :meth:`token_stats` or :meth:`scan_token_stats`) decides; only a dataset that
        fails is read, to name the first offending sequence.
        """
        stats = stats or self.scan_token_stats()
        low, high = stats.min_token_id, stats.max_token_id
        if low is None or high is None or (low >= 0 and high < vocab_size):  # None: no tokens
            return
        bad = high if high >= vocab_size else low
        stream = self.tokens()
        position = int(np.argmax(stream == bad))
        sequence = int(np.searchsorted(self.sequence_pointers, position * self.dtype.itemsize, side="right")) - 1
        raise IndexedDatasetError(
            f"{self.prefix} holds token id {bad} (first in sequence {sequence}) but the model vocabulary has "
            f"{vocab_size} entries; preprocess with the model's tokenizer or enlarge the model's vocab_size"
        )

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
