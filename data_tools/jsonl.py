"""Reading and writing record files (JSONL, gzipped JSONL, parquet) the same way in every stage.

A malformed line is reported as ``file:line: what is wrong``; the caller chooses to stop there
(``on_error="stop"``, the default) or to skip and count such lines (``on_error="skip"``).
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Literal

log = logging.getLogger(__name__)

OnError = Literal["stop", "skip"]
ON_ERROR_CHOICES = ("stop", "skip")
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
# how many skipped-line messages are kept (and logged) so a bad file cannot flood the log
_KEPT_ERRORS = 10


class MalformedRecordError(ValueError):
    """A record that cannot be used; the message starts with ``file:line``."""


@dataclass
class ReadStats:
    """What a reader saw: records yielded, lines skipped and the first few reasons why."""

    records: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < _KEPT_ERRORS:
            self.errors.append(message)
            log.warning("skipping %s", message)

    def merge(self, other: "ReadStats") -> None:
        self.records += other.records
        self.skipped += other.skipped
        self.errors.extend(other.errors[: max(0, _KEPT_ERRORS - len(self.errors))])


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


def is_jsonl(path: str | os.PathLike) -> bool:
    return str(path).endswith(JSONL_SUFFIXES)


def is_parquet(path: str | os.PathLike) -> bool:
    return str(path).endswith(PARQUET_SUFFIXES)


def expand_inputs(patterns: Iterable[str | os.PathLike], suffixes: tuple[str, ...] = JSONL_SUFFIXES + PARQUET_SUFFIXES) -> list[Path]:
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
            raise FileNotFoundError(f"input {pattern!r} matches no files (looked for {', '.join(suffixes)})")
        unknown = [p for p in matches if not str(p).endswith(suffixes)]
        if unknown:
            raise ValueError(f"input {unknown[0]} is not a supported file type; expected one of {', '.join(suffixes)}")
        files.extend(matches)
    return files


def parse_line(line: bytes | str, path: str | os.PathLike, lineno: int) -> dict[str, Any]:
    """One JSON object from one line, or :class:`MalformedRecordError` naming ``path:lineno``."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not valid UTF-8"
        raise MalformedRecordError(f"{path}:{lineno}: malformed JSON ({reason})") from None
    if not isinstance(record, dict):
        raise MalformedRecordError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb", buffering=1 << 20)


def iter_jsonl(path: str | os.PathLike, *, on_error: OnError = "stop", stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Records of one JSONL file (optionally gzipped); blank lines are ignored."""
    check_on_error(on_error)
    stats = stats if stats is not None else ReadStats()
    with open_binary(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = parse_line(line, path, lineno)
            except MalformedRecordError as exc:
                if on_error == "stop":
                    raise MalformedRecordError(f"{exc} (pass --on-error skip to skip such lines)") from None
                stats.skip(str(exc))
                continue
            stats.records += 1
            yield record


def iter_parquet(path: str | os.PathLike, *, columns: list[str] | None = None, batch_size: int = 1024,
                 stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
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


def iter_records(paths: Iterable[str | os.PathLike], *, on_error: OnError = "stop", stats: ReadStats | None = None,
                 columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Records of JSONL and parquet files in order (``columns`` narrows parquet reads)."""
    for path in paths:
        if is_parquet(path):
            yield from iter_parquet(path, columns=columns, stats=stats)
        elif is_jsonl(path):
            yield from iter_jsonl(path, on_error=on_error, stats=stats)
        else:
            raise ValueError(f"{path} is neither JSONL ({', '.join(JSONL_SUFFIXES)}) nor parquet")


class JsonlShardWriter:
    """Writes records to ``{prefix}-00000.jsonl``, ``{prefix}-00001.jsonl``, ... starting a new
    shard after ``max_bytes`` of output, so that later stages can process shards in parallel."""

    def __init__(self, prefix: str | os.PathLike, max_bytes: int = 256 << 20):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.prefix = os.fspath(prefix)
        self.max_bytes = max_bytes
        self.paths: list[Path] = []
        self.records = 0
        self._file: io.TextIOWrapper | None = None
        self._written = 0
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        # Shards of an earlier run under this prefix would be read back with ours by PREFIX-*.jsonl and
        # fewer new shards would not overwrite them all: refuse rather than mix two runs.
        earlier = sorted(Path(self.prefix).parent.glob(Path(self.prefix).name + "-[0-9][0-9][0-9][0-9][0-9].jsonl"))
        if earlier:
            raise FileExistsError(f"{earlier[0]} already exists ({len(earlier)} shard(s) under this prefix): remove "
                                  "them or choose another output prefix")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._file is None or self._written >= self.max_bytes:
            self._next_shard()
        self._file.write(line)
        self._written += len(line)
        self.records += 1

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        path = Path(f"{self.prefix}-{len(self.paths):05d}.jsonl")
        self.paths.append(path)
        self._file = open(path, "w", encoding="utf-8")
        self._written = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "JsonlShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_id(record: dict[str, Any], index: int) -> str:
    """A record's name in reports: its ``id``, else its ``path``, else ``#index`` (input order)."""
    for key in ("id", "path"):
        if record.get(key) not in (None, ""):
            return str(record[key])
    return f"#{index}"


def record_text(record: dict[str, Any], key: str, index: int) -> str:
    """The text field of a record, or :class:`MalformedRecordError` naming the field to pass."""
    text = record.get(key)
    if not isinstance(text, str):
        raise MalformedRecordError(f"record {index} has no string field {key!r} (fields: {sorted(record)}); "
                                   f"pass --text-key")
    return text
