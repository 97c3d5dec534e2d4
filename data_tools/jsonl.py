"""Reading and writing record files (JSONL, gzipped JSONL, parquet) the same way in every stage.

JSONL lines are read by :mod:`megaphi.common.jsonl` (re-exported here): a malformed line is reported
as ``file:line: what is wrong`` and the caller chooses to stop there (``on_error="stop"``, the
default) or to skip and count such lines (``on_error="skip"``); a damaged ``.gz`` always stops. This
module adds what only the data stages need: input expansion, parquet, and the sharded writer.
"""

from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from megaphi.common.errors import InputNotFoundError, OutputExistsError, UserError
from megaphi.common.files import remove_quietly, temp_path
from megaphi.common.jsonl import (
    ON_ERROR_CHOICES,
    ON_ERROR_HINT,
    DamagedFileError,
    MalformedRecordError,
    OnError,
    ReadStats,
    check_on_error,
    iter_jsonl,
    iter_line_chunks,
    iter_lines,
    open_binary,
    parse_line,
)

__all__ = [
    "ON_ERROR_CHOICES",
    "ON_ERROR_HINT",
    "DamagedFileError",
    "MalformedRecordError",
    "OnError",
    "ReadStats",
    "check_on_error",
    "iter_jsonl",
    "iter_line_chunks",
    "iter_lines",
    "open_binary",
    "parse_line",
    "JSONL_SUFFIXES",
    "PARQUET_SUFFIXES",
    "is_jsonl",
    "is_parquet",
    "expand_inputs",
    "iter_parquet",
    "iter_records",
    "JsonlShardWriter",
    "record_id",
    "record_text",
]

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def is_jsonl(path: str | os.PathLike) -> bool:
    return str(path).endswith(JSONL_SUFFIXES)


def is_parquet(path: str | os.PathLike) -> bool:
    return str(path).endswith(PARQUET_SUFFIXES)


def expand_inputs(
    patterns: Iterable[str | os.PathLike], suffixes: tuple[str, ...] = JSONL_SUFFIXES + PARQUET_SUFFIXES
) -> list[Path]:
    """Files named by paths, globs or directories (searched recursively for ``suffixes``), sorted
    within each pattern so that outputs are reproducible. Raises when a pattern matches nothing."""
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        if os.path.isdir(pattern):
            matches = sorted(p for p in Path(pattern).rglob("*") if p.is_file() and str(p).endswith(suffixes))
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            raise InputNotFoundError(f"input {pattern!r} matches no files (looked for {', '.join(suffixes)})")
        unknown = [p for p in matches if not str(p).endswith(suffixes)]
        if unknown:
            raise UserError(f"input {unknown[0]} is not a supported file type; expected one of {', '.join(suffixes)}")
        files.extend(matches)
    return files


def iter_parquet(
    path: str | os.PathLike, *, columns: list[str] | None = None, batch_size: int = 1024, stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of one parquet file as dicts, read one record batch at a time (bounded memory)."""
    import pyarrow.parquet as pq

    stats = stats if stats is not None else ReadStats()
    parquet = pq.ParquetFile(path)
    if columns:
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise MalformedRecordError(f"{path}: no column {missing[0]!r}; columns are {parquet.schema_arrow.names}")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        for row in batch.to_pylist():
            stats.records += 1
            yield row


def iter_records(
    paths: Iterable[str | os.PathLike],
    *,
    on_error: OnError = "stop",
    stats: ReadStats | None = None,
    columns: list[str] | None = None,
    hint: str = ON_ERROR_HINT,
) -> Iterator[dict[str, Any]]:
    """Records of JSONL and parquet files in order (``columns`` narrows parquet reads; ``hint``: what
    the message of a malformed JSONL line tells the user to do, see :func:`iter_jsonl`)."""
    for path in paths:
        if is_parquet(path):
            yield from iter_parquet(path, columns=columns, stats=stats)
        elif is_jsonl(path):
            yield from iter_jsonl(path, on_error=on_error, stats=stats, hint=hint)
        else:
            raise UserError(f"{path} is neither JSONL ({', '.join(JSONL_SUFFIXES)}) nor parquet")


class JsonlShardWriter:
    """Writes records to ``{prefix}-00000.jsonl``, ``{prefix}-00001.jsonl``, ... starting a new
    shard after ``max_bytes`` of output, so that later stages can process shards in parallel.

    Shards are written under temporary names and renamed into place only when the writer closes
    without an error (leaving the ``with`` block normally): a failed or killed run leaves no partial
    shard for a later stage to pick up by ``PREFIX-*.jsonl``.
    """

    def __init__(self, prefix: str | os.PathLike, max_bytes: int = 256 << 20):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.prefix = os.fspath(prefix)
        self.max_bytes = max_bytes
        self.paths: list[Path] = []
        self.records = 0
        self._temps: list[Path] = []
        self._file: io.TextIOWrapper | None = None
        self._written = 0
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        # Shards of an earlier run under this prefix would be read back with ours by PREFIX-*.jsonl and
        # fewer new shards would not overwrite them all: refuse rather than mix two runs.
        earlier = sorted(Path(self.prefix).parent.glob(Path(self.prefix).name + "-[0-9][0-9][0-9][0-9][0-9].jsonl"))
        if earlier:
            raise OutputExistsError(
                f"{earlier[0]} already exists ({len(earlier)} shard(s) under this prefix): remove "
                "them or choose another output prefix"
            )

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._file is None or self._written >= self.max_bytes:
            self._next_shard()
        assert self._file is not None
        self._file.write(line)
        self._written += len(line)
        self.records += 1

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        path = Path(f"{self.prefix}-{len(self.paths):05d}.jsonl")
        self.paths.append(path)
        self._temps.append(temp_path(path))
        self._file = open(self._temps[-1], "x", encoding="utf-8")
        self._written = 0

    def close(self) -> None:
        """Finish: every shard appears under its name."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for temp, path in zip(self._temps, self.paths):
            os.replace(temp, path)
        self._temps = []

    def abort(self) -> None:
        """Give up: remove every shard written so far."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for temp in self._temps:
            remove_quietly(temp)
        self._temps = []

    def __enter__(self) -> "JsonlShardWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def record_id(record: dict[str, Any], index: int) -> str:
    """A record's name in reports: its ``id``, else its ``path``, else ``#index`` (input order)."""
    for key in ("id", "path"):
        if record.get(key) not in (None, ""):
            return str(record[key])
    return f"#{index}"


def record_text(record: dict[str, Any], key: str, index: int, option: str = "--text-key") -> str:
    """The text field of a record, or :class:`MalformedRecordError` naming the ``option`` that chooses it."""
    text = record.get(key)
    if not isinstance(text, str):
        raise MalformedRecordError(
            f"record {index} has no string field {key!r} (fields: {sorted(record)}); pass {option}"
        )
    return text
