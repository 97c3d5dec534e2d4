"""Tokenize JSONL/parquet records into Megatron-compatible ``.bin/.idx`` datasets.

Flags follow Megatron-LM's ``tools/preprocess_data.py`` where they mean the same thing, and so do
the output names: each JSON key becomes ``{output_prefix}_{key}_document.bin/.idx``, one document
(one sequence) per record, ``<|endoftext|>`` appended with ``--append-eod``.

    python -m data_tools.preprocess --input data/code-*.jsonl --output-prefix data/code \\
        --tokenizer tok/ --append-eod --workers 2
    python -m data_tools.preprocess merge --input data/a_text_document data/b_text_document \\
        --output-prefix data/all_text_document
    python -m data_tools.preprocess stats --input data/megatron_made_text_document

Every dataset written here gets ``{prefix}.stats.json`` next to its ``.bin/.idx`` (the token-id
range, so that the trainer checks ids without reading the tokens); ``stats`` writes it for a
dataset made by another tool (Megatron-LM's own preprocess_data.py).

The reader hands raw chunks of about a MiB (whole lines, or parquet record batches) to worker
processes, which parse, tokenize with the Rust ``encode_batch`` and return flat numpy arrays; the
main process only appends them to the ``.bin`` in input order. At most a few chunks are in flight,
so memory stays bounded on inputs larger than RAM. Records with an empty text are skipped (and
counted), as Megatron-LM does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from megaphi.progress import progress as progress_display

from data_tools.jsonl import (
    ON_ERROR_CHOICES,
    MalformedRecordError,
    OnError,
    ReadStats,
    expand_inputs,
    is_parquet,
    iter_line_chunks,
    parse_line,
)
from data_tools.tokenizer import Tokenizer, load_tokenizer
from megaphi.data.indexed import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    best_dtype,
    merge_datasets,
    stats_path,
    write_token_stats,
)
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError


class EmptyCorpusError(UserError):
    """Preprocessing found no text to tokenize."""


@dataclass
class PreprocessResult:
    """What one run wrote: an output prefix per JSON key, and what it counted on the way."""

    prefixes: dict[str, str]
    documents: int = 0
    tokens: int = 0
    empty: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    read: ReadStats = field(default_factory=ReadStats)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.documents} documents, {self.tokens} tokens in {self.seconds:.1f}s "
            f"({self.tokens_per_s:,.0f} tokens/s); skipped {self.empty} empty and {self.read.skipped} malformed records; "
            f"wrote {', '.join(p + '.bin/.idx' for p in self.prefixes.values())}"
        )


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: ``{output_prefix}_{key}_document``."""
    return f"{output_prefix}_{key}_document"


# --- reading: raw chunks, cheap for the main process ----------------------------------------------


@dataclass
class Chunk:
    path: str
    first_line: int  # JSONL: line number of the first line; parquet: row number of the first row
    lines: bytes | None = None  # JSONL: whole lines
    batch: Any = None  # parquet: a pyarrow RecordBatch of the json keys

    @property
    def size(self) -> int:
        return len(self.lines) if self.lines is not None else self.batch.nbytes


def iter_chunks(paths: Sequence[Path], json_keys: Sequence[str], chunk_bytes: int) -> Iterator[Chunk]:
    for path in paths:
        if is_parquet(path):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            missing = [k for k in json_keys if k not in parquet.schema_arrow.names]
            if missing:
                raise MalformedRecordError(
                    f"{path}: no column {missing[0]!r}; columns are {parquet.schema_arrow.names} (choose with --json-keys)"
                )
            row = 1
            for batch in parquet.iter_batches(batch_size=2048, columns=list(json_keys)):
                yield Chunk(str(path), row, batch=batch)
                row += batch.num_rows
            continue
        for line, data in iter_line_chunks(path, chunk_bytes):
            yield Chunk(str(path), line, lines=data)


# --- encoding: in worker processes -----------------------------------------------------------------


@dataclass
class EncodedChunk:
    tokens: dict[str, np.ndarray]  # per key: the documents' tokens back to back
    lengths: dict[str, np.ndarray]  # per key: tokens per document
    read: ReadStats
    empty: int
    input_bytes: int


_tokenizer: Tokenizer | None = None
_settings: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, settings: dict[str, Any]) -> None:
    global _tokenizer, _settings
    # each worker is one core's worth of tokenizing; nested thread pools would only contend
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _tokenizer = load_tokenizer(tokenizer_path)
    _settings = settings


def _texts_of_chunk(chunk: Chunk, json_keys: Sequence[str], on_error: OnError, read: ReadStats) -> dict[str, list]:
    """Per key, the chunk's texts in order, with unusable records skipped or reported."""
    if chunk.batch is not None:
        columns = {k: chunk.batch.column(k).to_pylist() for k in json_keys}
        rows = [(chunk.first_line + i, {k: columns[k][i] for k in json_keys}) for i in range(chunk.batch.num_rows)]
    else:
        rows = []
        for offset, line in enumerate(chunk.lines.split(b"\n")):
            if line.strip():
                rows.append((chunk.first_line + offset, line))
    texts: dict[str, list] = {k: [] for k in json_keys}
    for number, row in rows:
        try:
            record = row if isinstance(row, dict) else parse_line(row, chunk.path, number)
            values = [record.get(k) for k in json_keys]
            for key, value in zip(json_keys, values):
                if not isinstance(value, str):
                    found = "is missing" if value is None else f"is a {type(value).__name__}, not a string"
                    raise MalformedRecordError(f"{chunk.path}:{number}: field {key!r} {found}")
        except MalformedRecordError as exc:
            if on_error == "stop":
                raise MalformedRecordError(f"{exc} (pass --on-error skip to skip such records)") from None
            read.skip(str(exc))
            continue
        read.records += 1
        for key, value in zip(json_keys, values):
            texts[key].append(value)
    return texts


def _flatten(ids: list[list[int]], eod_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate non-empty documents (each plus an EOD when asked) into one int64 array."""
    ids = [doc for doc in ids if doc]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    if eod_id is not None:
        lengths += 1
        ids = [item for doc in ids for item in (doc, (eod_id,))]
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def encode_chunk(
    chunk: Chunk,
    tokenizer: Tokenizer,
    *,
    json_keys: Sequence[str],
    append_eod: bool,
    on_error: OnError,
    dtype: np.dtype,
) -> EncodedChunk:
    """Tokenize one chunk: per key, its documents' tokens and lengths, checked against the vocab."""
    read = ReadStats()
    texts = _texts_of_chunk(chunk, json_keys, on_error, read)
    tokens, lengths, empty = {}, {}, 0
    for key in json_keys:
        flat, lengths[key] = _flatten(tokenizer.encode_batch(texts[key]), tokenizer.eod_id if append_eod else None)
        empty += len(texts[key]) - len(lengths[key])
        if flat.size and (flat.max() >= tokenizer.vocab_size or flat.min() < 0):
            bad = int(flat.max() if flat.max() >= tokenizer.vocab_size else flat.min())
            raise IndexedDatasetError(
                f"{chunk.path}: the tokenizer {tokenizer.path} produced token id {bad} outside its "
                f"vocabulary of {tokenizer.vocab_size}; the tokenizer files are inconsistent"
            )
        tokens[key] = flat.astype(dtype)
    return EncodedChunk(tokens, lengths, read, empty, chunk.size)


def _encode_in_worker(chunk: Chunk) -> EncodedChunk:
    return encode_chunk(chunk, _tokenizer, **_settings)


# --- the pipeline ----------------------------------------------------------------------------------


def preprocess(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    tokenizer: str | os.PathLike,
    *,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    workers: int = 1,
    chunk_bytes: int = 1 << 20,
    on_error: OnError = "stop",
    progress: bool = True,
) -> PreprocessResult:
    """Tokenize every record of ``inputs`` (JSONL, gzipped JSONL, parquet; paths, globs or
    directories) into one indexed dataset per JSON key. ``workers`` > 1 tokenizes in that many
    processes; the output is identical for any worker count."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if chunk_bytes < 1:
        raise UserError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if not json_keys or len(set(json_keys)) != len(json_keys):
        raise UserError(f"--json-keys must name distinct fields, got {list(json_keys)}")
    if on_error not in ON_ERROR_CHOICES:
        raise UserError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    paths = expand_inputs(inputs)
    tok = load_tokenizer(tokenizer)
    settings = dict(
        json_keys=tuple(json_keys), append_eod=append_eod, on_error=on_error, dtype=best_dtype(tok.vocab_size)
    )
    result = PreprocessResult({k: output_prefix_for(os.fspath(output_prefix), k) for k in json_keys})
    writers = {k: IndexedDatasetWriter(p, settings["dtype"]) for k, p in result.prefixes.items()}
    chunks = iter_chunks(paths, json_keys, chunk_bytes)
    start = time.perf_counter()
    try:
        with progress_display(desc="preprocess", unit="tokens", unit_scale=True, disable=not progress) as bar:
            for encoded in _encode_all(chunks, tok, settings, workers):
                for key, writer in writers.items():
                    writer.add_documents(encoded.tokens[key], encoded.lengths[key])
                key = json_keys[0]
                result.documents += len(encoded.lengths[key])
                result.tokens += len(encoded.tokens[key])
                result.empty += encoded.empty
                result.input_bytes += encoded.input_bytes
                result.read.merge(encoded.read)
                bar.update(sum(len(t) for t in encoded.tokens.values()))
        if result.documents == 0:
            raise EmptyCorpusError(
                f"no text to tokenize in {', '.join(map(str, paths))} ({result.read.records} records, "
                f"{result.empty} empty, {result.read.skipped} malformed); check --input and --json-keys"
            )
    except BaseException:
        for writer in writers.values():
            writer.close_without_index()
        raise
    for writer in writers.values():
        writer.finalize()
    result.seconds = time.perf_counter() - start
    return result


def _encode_all(
    chunks: Iterator[Chunk], tok: Tokenizer, settings: dict[str, Any], workers: int
) -> Iterator[EncodedChunk]:
    """Encoded chunks in input order, from this process or a bounded pipeline of worker processes."""
    if workers == 1:
        for chunk in chunks:
            yield encode_chunk(chunk, tok, **settings)
        return
    # fork: workers start at once with everything imported (spawn would re-import the training
    # stack behind megaphi.data, seconds per worker); the parent has not tokenized yet, so the
    # tokenizers thread pool that fork would break does not exist
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_init_worker, initargs=(tok.path, settings)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            # two chunks per worker keep every core busy while the next one is being read
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def merge(inputs: Sequence[str | os.PathLike], output_prefix: str | os.PathLike) -> IndexedDataset:
    """Concatenate indexed datasets named by prefix, or every ``.idx`` prefix in a directory, in order."""
    prefixes: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(str(p.with_suffix("")) for p in Path(item).glob("*.idx"))
            if not found:
                raise IndexedDatasetError(f"directory {item} holds no .idx files to merge")
            prefixes.extend(found)
        else:
            prefixes.append(item.removesuffix(".idx").removesuffix(".bin"))
    return merge_datasets(prefixes, output_prefix)


# --- command line ----------------------------------------------------------------------------------


def _merge_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.preprocess merge",
        description="Concatenate per-shard .bin/.idx datasets into one, in the order given.",
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="dataset prefixes (or their .idx/.bin), or directories of them"
    )
    parser.add_argument("--output-prefix", required=True, help="prefix of the merged .bin/.idx")
    args = parser.parse_args(argv)
    merged = merge(args.input, args.output_prefix)
    print(f"merged {merged!r}")
    return 0


def _stats_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.preprocess stats",
        description="Scan datasets made by another tool once and write their token "
        "statistics (PREFIX.stats.json), which the trainer reads at start.",
    )
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes (or their .idx/.bin)")
    args = parser.parse_args(argv)
    for item in args.input:
        prefix = item.removesuffix(".idx").removesuffix(".bin")
        stats = IndexedDataset(prefix).scan_token_stats()
        write_token_stats(prefix, stats)
        print(f"wrote {stats_path(prefix)}: {stats.num_tokens} tokens, ids {stats.min_token_id}..{stats.max_token_id}")
    return 0


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return _merge_main(argv[1:])
    if argv[:1] == ["stats"]:
        return _stats_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.preprocess",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Subcommands: `python -m data_tools.preprocess merge --help` merges datasets; "
        "`... stats --help` records the token statistics of a dataset made "
        "by another tool.",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="JSONL (.jsonl, .json, .jsonl.gz) or parquet files, globs or directories",
    )
    parser.add_argument("--output-prefix", required=True, help="outputs are PREFIX_{key}_document.bin/.idx")
    parser.add_argument(
        "--tokenizer",
        "--tokenizer-model",
        dest="tokenizer",
        required=True,
        help="Hugging Face tokenizer directory or sentencepiece model (see data_tools.tokenizer)",
    )
    parser.add_argument(
        "--json-keys", nargs="+", default=["text"], help="record fields to tokenize, one dataset each (default: text)"
    )
    parser.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    parser.add_argument("--workers", type=int, default=1, help="tokenizing processes (default: 1, in this process)")
    parser.add_argument(
        "--chunk-bytes", type=int, default=1 << 20, help="input bytes per unit of work (default: 1 MiB)"
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="stop",
        help="malformed JSONL lines or missing fields: stop with file:line (default) or skip and count them",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    result = preprocess(
        args.input,
        args.output_prefix,
        args.tokenizer,
        json_keys=args.json_keys,
        append_eod=args.append_eod,
        workers=args.workers,
        chunk_bytes=args.chunk_bytes,
        on_error=args.on_error,
        progress=not args.no_progress,
    )
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
