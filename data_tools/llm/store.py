"""The append-only, resumable output of a run: an output and a failure JSONL keyed by request id."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text
from megaphi.common.jsonl import MalformedRecordError, iter_numbered_jsonl

if TYPE_CHECKING:
    from data_tools.llm.runner import RunStats


class ResultStore:
    """Output and failure JSONL files, each line a JSON object with an "id".

    A line is written with a single `write` on an O_APPEND descriptor, so a kill leaves at most one
    torn last line; opening the store cuts such a tail off before anything new is appended.
    """

    def __init__(
        self, out_path: str | os.PathLike[str], failures_path: str | os.PathLike[str], *, retry_failed: bool = False
    ):
        self.out_path, self.failures_path = Path(out_path), Path(failures_path)
        if self.out_path.resolve() == self.failures_path.resolve():
            raise UserError(f"output and failure log are the same file ({self.out_path}): give two paths")
        self.done_ids = _load_ids(self.out_path)
        failed = _load_ids(self.failures_path)
        if retry_failed and failed:
            # Drop the old verdicts before retrying; a kill now leaves those ids pending, never lost.
            _rewrite_without(self.failures_path, failed - self.done_ids)
            failed &= self.done_ids
        self.failed_ids = failed
        self._out = _open_append(self.out_path)
        self._failures = _open_append(self.failures_path)

    def skip_finished(self, request_id: str, stats: "RunStats") -> bool:
        """True when an earlier run already settled ``request_id``, counted in ``stats`` as done or failed."""
        if request_id in self.done_ids:
            stats.already_done += 1
            return True
        if request_id in self.failed_ids:
            stats.failed_before += 1
            return True
        return False

    def write_result(self, record: dict[str, Any]) -> None:
        _append_line(self._out, record)
        self.done_ids.add(record["id"])

    def write_failure(self, record: dict[str, Any]) -> None:
        _append_line(self._failures, record)
        self.failed_ids.add(record["id"])

    def close(self) -> None:
        os.close(self._out)
        os.close(self._failures)


def _open_append(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _append_line(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    written = os.write(fd, data)
    while written < len(data):  # short writes only happen on odd filesystems
        written += os.write(fd, data[written:])


def _load_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:  # a torn last line from a killed run
            f.truncate(len(complete))
    return {record["id"] for record in _records_with_ids(path)}


def _records_with_ids(path: Path) -> Iterator[dict[str, Any]]:
    for number, record in iter_numbered_jsonl(path, hint="fix or remove that line"):
        if not isinstance(record.get("id"), str):
            raise MalformedRecordError(f"{path}:{number}: a record without a string 'id': fix or remove that line")
        yield record


def _rewrite_without(path: Path, ids: set[str]) -> None:
    kept = [record for record in _records_with_ids(path) if record["id"] not in ids]
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in kept))


FAILURES_SUFFIX = ".failures.jsonl"


def failures_path_for(out: Path) -> Path:
    """OUT.jsonl -> OUT.failures.jsonl, where a run files what it did not keep."""
    return out.with_name(out.name.removesuffix(".jsonl") + FAILURES_SUFFIX)
