"""The datatrove pipeline steps that read and write megaphi's record files, shared by every data stage.

A record is one JSON object per line (or a parquet row) with at least ``id`` and a text field; the
corpus stage writes ``{"id", "text", "path", "lang", "meta"}``. Inside a pipeline a record travels as a
datatrove ``Document``: the text and id, every other field in ``metadata``, so that a stage that only
filters writes each kept record back unchanged.

Task ``rank`` of ``world_size`` reads input files ``rank, rank + world_size, ...`` of the sorted input
list and writes ``{prefix}-{rank:05d}-NNNNN.jsonl``: the split depends only on the inputs and the task
count, never on the executor, so local, Slurm and Ray runs write the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_tools.jsonl import (
    JsonlShardWriter,
    MalformedRecordError,
    OnError,
    ReadStats,
    expand_inputs,
    iter_records,
    record_id,
    record_text,
)
from megaphi.common.files import remove_quietly
from megaphi.progress import progress


def document_from_record(
    record: dict[str, Any], index: int, text_key: str = "text", text_option: str = "--text-key"
) -> Document:
    """The document of a record: its text and id, every other field kept in ``metadata``."""
    text = record_text(record, text_key, index, text_option)
    metadata = {key: value for key, value in record.items() if key not in ("id", text_key)}
    return Document(text=text, id=record_id(record, index), metadata=metadata)


def record_from_document(document: Document, text_key: str = "text") -> dict[str, Any]:
    """The record a document came from (fields in their usual order: id, text, then the rest)."""
    return {"id": document.id, text_key: document.text, **document.metadata}


def numbered_task_files(paths: Sequence[str | os.PathLike], rank: int, world_size: int) -> list[tuple[int, str]]:
    """The input files task ``rank`` reads, every ``world_size``-th of the sorted list, each with its
    number in that list (its place in the whole input, whichever task reads it)."""
    return list(enumerate(sorted(os.fspath(p) for p in paths)))[rank::world_size]


def task_files(paths: Sequence[str | os.PathLike], rank: int, world_size: int) -> list[str]:
    """The input files task ``rank`` reads (see :func:`numbered_task_files`)."""
    return [path for _, path in numbered_task_files(paths, rank, world_size)]


class RecordReader(PipelineStep):
    """Reads the records of JSONL/parquet files (see :mod:`data_tools.jsonl`) as documents.

    ``inputs`` (paths, globs, directories) are expanded when the task runs, not when the pipeline is
    built: on Slurm every stage is built before the stage writing its inputs has run. A record without
    a string ``text_key`` is malformed like an unparsable line: ``on_error`` stops (naming the file and
    ``text_option``, the command's flag that chooses the field) or skips and counts it.

    With ``position_key``, each document also carries its place in the whole input, ``(file number in
    the sorted input list, record number in that file)``, in ``metadata[position_key]``: the same for
    every task count, for steps that must know input order across tasks (the step that uses it pops
    it, so that it is not written out)."""

    name = "records"
    type = "📖 - READER"

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike],
        *,
        text_key: str = "text",
        on_error: OnError = "stop",
        text_option: str = "--text-key",
        position_key: str | None = None,
    ):
        super().__init__()
        self.inputs = [os.fspath(p) for p in inputs]
        self.text_key = text_key
        self.on_error = on_error
        self.text_option = text_option
        self.position_key = position_key

    def files(self, rank: int, world_size: int) -> list[str]:
        """The input files of task ``rank``, in the order it reads them."""
        return task_files(expand_inputs(self.inputs), rank, world_size)

    def read(self, path: str, read: ReadStats, file_number: int | None = None) -> Iterator[Document]:
        """The documents of one input file (ids of records without one: their position in the file);
        with ``position_key``, ``file_number`` is the file's place in the sorted input list."""
        for index, record in enumerate(iter_records([path], on_error=self.on_error, stats=read)):
            try:
                document = document_from_record(record, index, self.text_key, self.text_option)
            except MalformedRecordError as exc:
                if self.on_error == "stop":
                    raise MalformedRecordError(f"{path}: {exc}") from None
                read.skip(f"{path}: {exc}")
                continue
            self.stat_update("documents")
            if self.position_key:
                document.metadata[self.position_key] = (file_number, index)
            yield document

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if data:
            yield from data
        read = ReadStats()
        for file_number, path in numbered_task_files(expand_inputs(self.inputs), rank, world_size):
            yield from self.read(path, read, file_number)
        if read.skipped:
            self.stat_update("skipped_lines", value=read.skipped)


class RecordWriter(PipelineStep):
    """Writes documents back as records to ``{prefix}-{rank:05d}-NNNNN.jsonl`` and passes them on.

    Shards appear under their names only when the task finishes (:class:`JsonlShardWriter`), so a
    killed task leaves nothing that a later stage would read as output."""

    name = "write records"
    type = "💽 - WRITER"

    def __init__(self, output_prefix: str | os.PathLike, *, text_key: str = "text", shard_bytes: int = 256 << 20):
        super().__init__()
        self.output_prefix = os.fspath(output_prefix)
        self.text_key = text_key
        self.shard_bytes = shard_bytes

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        prefix = Path(f"{self.output_prefix}-{rank:05d}")
        # A task runs again only when it did not finish: what a killed earlier try left half-written
        # (hidden temporary shards, see megaphi.common.files.temp_path) is this task's to remove.
        for stale in prefix.parent.glob(f".{prefix.name}-[0-9][0-9][0-9][0-9][0-9].jsonl.*.tmp"):
            remove_quietly(stale)
        with JsonlShardWriter(prefix, max_bytes=self.shard_bytes) as writer:
            for document in data or ():
                writer.write(record_from_document(document, self.text_key))
                self.stat_update("written")
                yield document


class Progress(PipelineStep):
    """Passes documents on unchanged while showing how many went by (:mod:`megaphi.progress`: a bar on a
    terminal, a line now and then in a log), one display per task."""

    name = "progress"
    type = "📊 - STATS"

    def __init__(self, desc: str, *, unit: str = "docs", disable: bool = False):
        super().__init__()
        self.desc, self.unit, self.disable = desc, unit, disable

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        desc = self.desc if world_size == 1 else f"{self.desc} {rank + 1}/{world_size}"
        with progress(disable=self.disable, desc=desc, unit=self.unit) as bar:
            for document in data or ():
                yield document
                bar.update(1)


class ReportStep(PipelineStep):
    """The one-task last stage of a command: once the ``tasks`` tasks before it are done, :meth:`write`
    sums what they left into the command's report. Documents handed to it pass on unchanged."""

    type = "📊 - STATS"

    def __init__(self, config: Any, tasks: int):
        super().__init__()
        self.config = config
        self.tasks = tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        yield from data or ()
        self.write()

    def write(self) -> None:
        raise NotImplementedError


def task_stats(logging_dir: str | os.PathLike, rank: int) -> dict[str, dict[str, float]]:
    """What the steps of a finished task counted (datatrove's ``stats/NNNNN.json``): step name ->
    label -> total, e.g. ``task_stats(dir, 0)["records"]["skipped_lines"]``."""
    with open(os.path.join(os.fspath(logging_dir), "stats", f"{rank:05d}.json"), encoding="utf-8") as f:
        steps = json.load(f)
    return {
        step["name"].rpartition(": ")[2]: {
            label: value["total"] if isinstance(value, dict) else value for label, value in step["stats"].items()
        }
        for step in steps
    }
