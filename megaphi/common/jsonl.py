"""Reading JSONL (optionally gzipped) the same way everywhere.

A malformed line is reported as ``file:line: what is wrong``; the caller chooses to stop there
(``on_error="stop"``, the default) or to skip and count such lines (``on_error="skip"``). Damaged
compression (a truncated or bit-flipped ``.gz``, a CRC mismatch) always stops, with the file, the
line and the byte offset where reading failed: nothing after that point can be trusted or resumed.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Literal

from megaphi.common.errors import UserError

log = logging.getLogger(__name__)

OnError = Literal["stop", "skip"]
ON_ERROR_CHOICES = ("stop", "skip")
# how many skipped-line messages are kept (and logged) so a bad file cannot flood the log
_KEPT_ERRORS = 10
# what gzip raises on a truncated member, corrupt deflate data, a bad header or a CRC mismatch
_GZIP_DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile)


class MalformedRecordError(UserError):
    """A record that cannot be used; the message starts with ``file:line``."""


class DamagedFileError(MalformedRecordError):
    """A file whose bytes cannot be read (truncated or corrupt compression)."""


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
        raise UserError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    if str(path).endswith(".gz"):
        # a GzipFile reads bytes like any IO[bytes]
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=1 << 20)


def _damaged(path: str | os.PathLike, lineno: int, offset: int, exc: BaseException) -> DamagedFileError:
    reason = str(exc) or type(exc).__name__
    return DamagedFileError(
        f"{path}:{lineno}: cannot read past byte {offset} of the decompressed data ({reason}): "
        "the file is truncated or corrupt; restore or regenerate it"
    )


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)`` of a text or ``.gz`` file; damaged compression raises
    :class:`DamagedFileError` naming the file, the line and the offset."""
    lineno, offset = 0, 0
    with open_binary(path) as f:
        lines = iter(f)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except _GZIP_DAMAGE as exc:
                raise _damaged(path, lineno + 1, offset, exc) from None
            lineno += 1
            offset += len(line)
            yield lineno, line


def iter_line_chunks(path: str | os.PathLike, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """``(number of the first line, whole lines)`` in chunks of about ``chunk_bytes``, with the same
    damage reporting as :func:`iter_lines`."""
    lineno, offset = 1, 0
    with open_binary(path) as f:
        while True:
            try:
                data = f.read(chunk_bytes)
                # whole lines only: finish the line the fixed-size read cut through
                if data and not data.endswith(b"\n"):
                    data += f.readline()
            except _GZIP_DAMAGE as exc:
                raise _damaged(path, lineno, offset, exc) from None
            if not data:
                return
            yield lineno, data
            lineno += data.count(b"\n")
            offset += len(data)


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


# What a command that reads JSONL with --on-error tells the user to do about a malformed line.
ON_ERROR_HINT = "pass --on-error skip to skip such lines"


def iter_jsonl(
    path: str | os.PathLike,
    *,
    on_error: OnError = "stop",
    stats: ReadStats | None = None,
    hint: str = ON_ERROR_HINT,
) -> Iterator[dict[str, Any]]:
    """Records of one JSONL file (optionally gzipped); blank lines are ignored. ``hint`` ends the
    message of a malformed line when ``on_error`` is ``"stop"``: what the user can do about it."""
    for _, record in iter_numbered_jsonl(path, on_error=on_error, stats=stats, hint=hint):
        yield record


def iter_numbered_jsonl(
    path: str | os.PathLike,
    *,
    on_error: OnError = "stop",
    stats: ReadStats | None = None,
    hint: str = ON_ERROR_HINT,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of one JSONL file, as :func:`iter_jsonl` reads it, so that a caller
    checking a record's fields can name ``file:line`` too."""
    check_on_error(on_error)
    stats = stats if stats is not None else ReadStats()
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            record = parse_line(line, path, lineno)
        except MalformedRecordError as exc:
            if on_error == "stop":
                raise MalformedRecordError(f"{exc} ({hint})" if hint else str(exc)) from None
            stats.skip(str(exc))
            continue
        stats.records += 1
        yield lineno, record


def read_jsonl(path: str | os.PathLike, **options: Any) -> list[dict[str, Any]]:
    """Every record of one JSONL file, in order (see :func:`iter_jsonl` for ``options``)."""
    return list(iter_jsonl(Path(path), **options))
