"""Atomic writes: a reader sees the old file or the new one, never half of one.

Write to a temporary name in the same directory, then rename over the target (``os.replace`` is
atomic on POSIX file systems); on any failure the temporary file is removed and the target is left
as it was. ``durable=True`` also fsyncs before the rename, for files a killed job must find intact
(a checkpoint root's ``latest``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden, unique name next to ``path`` for writing it before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def remove_quietly(path: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8", durable: bool = False
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing (``"w"`` or ``"wb"``); it appears, complete, only if the block ends
    without an exception."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    tmp = temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else encoding) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    with atomic_open(path, "w", durable=durable) as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)
