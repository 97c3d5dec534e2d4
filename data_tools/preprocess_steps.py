"""The datatrove steps of ``python -m data_tools.preprocess`` (the stages are described there): each
tokenize task writes one ``.bin/.idx`` part per input file, one merge concatenates the parts in
input order, and one report writes the counts; with the names of the files they pass along.
"""

from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_tools.executors import logging_dir_for
from data_tools.jsonl import MalformedRecordError, ReadStats
from data_tools.steps import RecordReader, ReportStep
from data_tools.tokenizer import Tokenizer, load_tokenizer
from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text
from megaphi.data.indexed import IndexedDatasetError, IndexedDatasetWriter, best_dtype, merge_datasets
from megaphi.progress import progress as progress_display

if TYPE_CHECKING:
    from data_tools.preprocess import PreprocessConfig


class EmptyCorpusError(UserError):
    """Preprocessing found no text to tokenize."""


def output_prefix_for(output_prefix: str | os.PathLike, key: str) -> str:
    """Megatron-LM's naming: ``{output_prefix}_{key}_document``."""
    return f"{os.fspath(output_prefix)}_{key}_document"


def tokenize_dir(output_prefix: str | os.PathLike) -> str:
    """The tokenize stage's logging directory; its tasks' parts are in ``parts/`` under it."""
    return logging_dir_for(output_prefix, "tokenize")


def part_prefix(parts_dir: str, rank: int, file: int, key: str) -> str:
    """Where tokenize task ``rank`` writes the documents of ``key`` from its ``file``-th input file."""
    return f"{parts_dir}/{rank:05d}-{file:05d}_{key}_document"


def manifest_path(parts_dir: str, rank: int) -> str:
    """Written last by a tokenize task: the input files its parts hold, in order."""
    return f"{parts_dir}/{rank:05d}.json"


# --- tokenize: one part per input file of the task ------------------------------------------------


def _batches(documents: Iterable[Document], batch_bytes: int) -> Iterator[list[Document]]:
    """Documents in lists of about ``batch_bytes`` of text: enough for the tokenizer's threads."""
    batch: list[Document] = []
    size = 0
    for document in documents:
        batch.append(document)
        size += len(document.text)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _flatten(ids: list[list[int]], eod_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate non-empty documents (each plus an EOD when asked) into one int64 array."""
    ids = [doc for doc in ids if doc]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    if eod_id is not None:
        lengths += 1
        ids = [item for doc in ids for item in (doc, [eod_id])]
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


class TokenizeRecords(PipelineStep):
    """Reads a task's input files with ``reader`` and tokenizes each into its own part,
    ``{parts_dir}/{rank:05d}-{file:05d}_{key}_document.bin/.idx`` per JSON key, then writes the task's
    manifest. One part per input file lets the merge put every document back in input-file order
    whichever task read it.

    The first key is the document's text (the reader's ``text_key``); the others come from its
    metadata (the record's other fields). A killed task leaves no manifest and no completion marker;
    its rerun writes its parts again from the start."""

    name = "tokenize"
    type = "🔢 - TOKENIZER"

    def __init__(
        self,
        reader: RecordReader,
        parts_dir: str,
        tokenizer: str,
        *,
        json_keys: Sequence[str],
        append_eod: bool,
        batch_bytes: int,
        progress: bool,
    ):
        super().__init__()
        self.reader = reader
        self.parts_dir = parts_dir
        self.tokenizer = tokenizer
        self.json_keys = list(json_keys)
        self.append_eod = append_eod
        self.batch_bytes = batch_bytes
        self.progress = progress

    def _texts(self, batch: list[Document], read: ReadStats) -> dict[str, list[str]]:
        """Per key, the batch's texts; a record lacking a further key is malformed like a bad line."""
        texts: dict[str, list[str]] = {key: [] for key in self.json_keys}
        for document in batch:
            values = [document.text] + [document.metadata.get(key) for key in self.json_keys[1:]]
            bad = next((k for k, v in zip(self.json_keys, values) if not isinstance(v, str)), None)
            if bad is not None:
                value = document.metadata.get(bad)
                found = "is missing" if value is None else f"is a {type(value).__name__}, not a string"
                message = f"record {document.id}: field {bad!r} {found}"
                if self.reader.on_error == "stop":
                    raise MalformedRecordError(f"{message} (pass --on-error skip to skip such records)")
                read.skip(message)
                continue
            for key, value in zip(self.json_keys, values):
                texts[key].append(value)
        return texts

    def _encode(self, tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        flat, lengths = _flatten(tokenizer.encode_batch(texts), tokenizer.eod_id if self.append_eod else None)
        if flat.size and (flat.max() >= tokenizer.vocab_size or flat.min() < 0):
            bad = int(flat.max() if flat.max() >= tokenizer.vocab_size else flat.min())
            raise IndexedDatasetError(
                f"the tokenizer {tokenizer.path} produced token id {bad} outside its vocabulary of "
                f"{tokenizer.vocab_size}; the tokenizer files are inconsistent"
            )
        return flat, lengths

    def _tokenize_file(
        self, documents: Iterator[Document], prefix: dict[str, str], tokenizer: Tokenizer, read: ReadStats, bar: Any
    ) -> None:
        dtype = best_dtype(tokenizer.vocab_size)
        writers = {key: IndexedDatasetWriter(prefix[key], dtype) for key in self.json_keys}
        try:
            for batch in _batches(documents, self.batch_bytes):
                with self.track_time(unit="batch"):
                    texts = self._texts(batch, read)
                    for key, writer in writers.items():
                        flat, lengths = self._encode(tokenizer, texts[key])
                        writer.add_documents(flat.astype(dtype), lengths)
                        self.stat_update(f"empty_{key}", value=len(texts[key]) - len(lengths))
                        self.stat_update(f"documents_{key}", value=len(lengths))
                        self.stat_update(f"tokens_{key}", value=len(flat))
                        bar.update(len(flat))
        except BaseException:
            for writer in writers.values():
                writer.close_without_index()
            raise
        for writer in writers.values():
            writer.finalize()

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tokenizer = load_tokenizer(self.tokenizer)
        files = self.reader.files(rank, world_size)
        read = ReadStats()
        with progress_display(
            desc=f"tokenize {rank + 1}/{world_size}", unit="tokens", unit_scale=True, disable=not self.progress
        ) as bar:
            for file, path in enumerate(files):
                prefix = {key: part_prefix(self.parts_dir, rank, file, key) for key in self.json_keys}
                self._tokenize_file(self.reader.read(path, read), prefix, tokenizer, read, bar)
        self.stat_update("skipped_records", value=read.skipped)
        manifest = {"rank": rank, "tasks": world_size, "files": files}
        atomic_write_text(manifest_path(self.parts_dir, rank), json.dumps(manifest, indent=1) + "\n")
        return None


# --- merge and report: one task each --------------------------------------------------------------


@dataclass
class TaskCounts:
    """What one tokenize task counted (from its datatrove stats file), for the first JSON key."""

    documents: int = 0
    tokens: int = 0
    empty: int = 0
    skipped: int = 0  # malformed lines and records without the text fields

    def add(self, other: "TaskCounts") -> "TaskCounts":
        return TaskCounts(
            self.documents + other.documents,
            self.tokens + other.tokens,
            self.empty + other.empty,
            self.skipped + other.skipped,
        )


def _unfinished(tokenize: str, rank: int, what: str) -> UserError:
    return UserError(
        f"tokenize task {rank} did not finish ({what}); rerun the same command to run the missing tasks, "
        f"or remove {Path(tokenize).parent} to start over"
    )


def task_counts(tokenize: str, rank: int, key: str) -> TaskCounts:
    """The counts a finished tokenize task left in ``{tokenize}/stats/{rank:05d}.json``."""
    from datatrove.utils.stats import MetricStats

    path = Path(tokenize) / "stats" / f"{rank:05d}.json"
    if not path.is_file():
        raise _unfinished(tokenize, rank, f"{path} does not exist")
    totals: dict[str, int] = {}
    for step in json.loads(path.read_text(encoding="utf-8")):
        for label, value in step["stats"].items():
            totals[label] = totals.get(label, 0) + int(MetricStats.from_dict(value).total)
    return TaskCounts(
        documents=totals.get(f"documents_{key}", 0),
        tokens=totals.get(f"tokens_{key}", 0),
        empty=totals.get(f"empty_{key}", 0),
        skipped=totals.get("skipped_records", 0),
    )


def parts_in_input_order(tokenize: str, tasks: int) -> list[tuple[int, int]]:
    """``(rank, file)`` of every part, in the sorted order of the input files they were read from
    (each task reads its files in sorted order: merging the tasks' lists restores the whole order;
    a file given twice is read twice, and either copy may come first: their documents are the same)."""
    parts_dir = f"{tokenize}/parts"
    listed = []
    for rank in range(tasks):
        path = Path(manifest_path(parts_dir, rank))
        if not path.is_file():
            raise _unfinished(tokenize, rank, f"{path} does not exist")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest["tasks"] != tasks:
            raise UserError(
                f"{path} is from a run with {manifest['tasks']} tasks, not {tasks}; rerun with "
                f"--tasks {manifest['tasks']}, or remove {Path(tokenize).parent} to start over"
            )
        listed.append([(name, rank, file) for file, name in enumerate(manifest["files"])])
    return [(rank, file) for _, rank, file in heapq.merge(*listed)]


class MergeParts(PipelineStep):
    """Concatenates the tokenize tasks' parts in input order into ``{output_prefix}_{key}_document``."""

    name = "merge"
    type = "💽 - WRITER"

    def __init__(self, tokenize: str, tasks: int, output_prefix: str, json_keys: Sequence[str], inputs: Sequence[str]):
        super().__init__()
        self.tokenize, self.tasks, self.output_prefix = tokenize, tasks, output_prefix
        self.json_keys, self.inputs = list(json_keys), list(inputs)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        parts = parts_in_input_order(self.tokenize, self.tasks)
        total = TaskCounts()
        for task in range(self.tasks):
            total = total.add(task_counts(self.tokenize, task, self.json_keys[0]))
        if total.documents == 0:
            raise EmptyCorpusError(
                f"no text to tokenize in {', '.join(self.inputs)} ({total.empty} empty and {total.skipped} "
                "malformed records); check --input and --json-keys"
            )
        for key in self.json_keys:
            merge_datasets(
                [part_prefix(f"{self.tokenize}/parts", task, file, key) for task, file in parts],
                output_prefix_for(self.output_prefix, key),
            )
            self.stat_update("datasets")
        return None


def report_path(output_prefix: str | os.PathLike) -> str:
    return f"{os.fspath(output_prefix)}.preprocess.json"


class WriteReport(ReportStep):
    """Writes ``{output_prefix}.preprocess.json``: the totals and each tokenize task's counts."""

    name = "report"
    type = "📊 - REPORT"
    config: PreprocessConfig

    def write(self) -> None:
        prefix, json_keys = self.config.output_prefix, self.config.json_keys
        tokenize = tokenize_dir(prefix)
        per_task = [task_counts(tokenize, task, json_keys[0]) for task in range(self.tasks)]
        total = TaskCounts()
        for counts in per_task:
            total = total.add(counts)
        report = {
            "datasets": {key: output_prefix_for(prefix, key) for key in json_keys},
            **vars(total),
            "tasks": [vars(counts) for counts in per_task],
        }
        atomic_write_text(report_path(prefix), json.dumps(report, indent=1) + "\n")
