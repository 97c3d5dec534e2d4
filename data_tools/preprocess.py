"""Tokenize JSONL/parquet records into Megatron-compatible ``.bin/.idx`` datasets, as datatrove stages.

Flags follow Megatron-LM's ``tools/preprocess_data.py`` where they mean the same thing, and so do
the output names: each JSON key becomes ``{output_prefix}_{key}_document.bin/.idx``, one document
(one sequence) per record, ``<|endoftext|>`` appended with ``--append-eod``.

    python -m data_tools.preprocess --input data/code-*.jsonl --output-prefix data/code \\
        --tokenizer tok/ --append-eod --tasks 2
    python -m data_tools.preprocess merge --input data/a_text_document data/b_text_document \\
        --output-prefix data/all_text_document
    python -m data_tools.preprocess stats --input data/megatron_made_text_document

Three stages (see ``data_tools.executors`` for ``--executor``, ``--tasks``, ``--workers`` and Slurm):
``tokenize`` deals the sorted input files to ``--tasks`` tasks; each task reads its records
(``data_tools.steps.RecordReader``), tokenizes them in batches of about ``--chunk-bytes`` of text with
the tokenizer's batch encoding, and writes one ``.bin/.idx`` part per input file under
``PREFIX.datatrove/tokenize/parts/``. ``merge`` (one task) concatenates the parts in input-file order,
so the final files are byte-identical to megatron-core's ``IndexedDatasetBuilder`` fed the same
documents in the same order, whatever the task count. ``report`` (one task) writes
``PREFIX.preprocess.json``: the counts, in total and per task. A task that finished leaves a
completion marker: rerunning a killed or failed command runs only what is missing (remove
``PREFIX.datatrove`` to start over). The files are split between tasks, not lines: a single input file
is one task (its tokenizer still uses every core through its own threads).

Every dataset written here gets ``{prefix}.stats.json`` next to its ``.bin/.idx`` (the token-id
range, so that the trainer checks ids without reading the tokens); ``stats`` writes it for a
dataset made by another tool (Megatron-LM's own preprocess_data.py). Records with an empty text are
skipped (and counted), as Megatron-LM does.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_tools.executors import (
    ExecutorOptions,
    Stage,
    add_executor_arguments,
    executor_options_from_args,
    logging_dir_for,
    run_stages,
)
from data_tools.jsonl import ON_ERROR_CHOICES, MalformedRecordError, OnError, ReadStats, expand_inputs
from data_tools.steps import RecordReader
from data_tools.tokenizer import Tokenizer, load_tokenizer
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text
from megaphi.data.indexed import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    best_dtype,
    merge_datasets,
    stats_path,
    write_token_stats,
)
from megaphi.progress import progress as progress_display


class EmptyCorpusError(UserError):
    """Preprocessing found no text to tokenize."""


@dataclass
class PreprocessConfig:
    """The options of ``python -m data_tools.preprocess`` (flag ``--foo-bar`` is field ``foo_bar``)."""

    input: list[str]  # JSONL/parquet files, globs or directories
    output_prefix: str  # outputs are {output_prefix}_{key}_document.bin/.idx
    tokenizer: str  # Hugging Face tokenizer directory or sentencepiece model
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    append_eod: bool = False
    chunk_bytes: int = 1 << 20  # text handed to the tokenizer at once
    on_error: str = "stop"
    no_progress: bool = False

    def check(self) -> None:
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise UserError(f"--json-keys must name distinct fields, got {list(self.json_keys)}")
        if self.chunk_bytes < 1:
            raise UserError(f"--chunk-bytes must be positive, got {self.chunk_bytes}")
        if self.on_error not in ON_ERROR_CHOICES:
            raise UserError(f"--on-error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}")


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


class WriteReport(PipelineStep):
    """Writes ``{output_prefix}.preprocess.json``: the totals and each tokenize task's counts."""

    name = "report"
    type = "📊 - REPORT"

    def __init__(self, tokenize: str, tasks: int, output_prefix: str, json_keys: Sequence[str]):
        super().__init__()
        self.tokenize, self.tasks, self.output_prefix, self.json_keys = tokenize, tasks, output_prefix, list(json_keys)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        per_task = [task_counts(self.tokenize, task, self.json_keys[0]) for task in range(self.tasks)]
        total = TaskCounts()
        for counts in per_task:
            total = total.add(counts)
        report = {
            "datasets": {key: output_prefix_for(self.output_prefix, key) for key in self.json_keys},
            **vars(total),
            "tasks": [vars(counts) for counts in per_task],
        }
        atomic_write_text(report_path(self.output_prefix), json.dumps(report, indent=1) + "\n")
        return None


# --- the command -----------------------------------------------------------------------------------


def stages(config: PreprocessConfig, options: ExecutorOptions) -> list[Stage]:
    """tokenize (``--tasks`` tasks) -> merge (1 task) -> report (1 task)."""
    config.check()
    tokenize = tokenize_dir(config.output_prefix)
    reader = RecordReader(
        config.input,
        text_key=config.json_keys[0],
        on_error=config.on_error,  # type: ignore[arg-type]
        text_option="--json-keys",
    )
    step = TokenizeRecords(
        reader,
        f"{tokenize}/parts",
        config.tokenizer,
        json_keys=config.json_keys,
        append_eod=config.append_eod,
        batch_bytes=config.chunk_bytes,
        progress=not config.no_progress,
    )
    merge = MergeParts(tokenize, options.tasks, config.output_prefix, config.json_keys, config.input)
    report = WriteReport(tokenize, options.tasks, config.output_prefix, config.json_keys)
    return [
        Stage("tokenize", [step], tokenize),
        Stage("merge", [merge], logging_dir_for(config.output_prefix, "merge"), tasks=1),
        Stage("report", [report], logging_dir_for(config.output_prefix, "report"), tasks=1),
    ]


@dataclass
class PreprocessResult:
    """What one run wrote: an output prefix per JSON key, and what it counted on the way."""

    prefixes: dict[str, str]
    documents: int = 0
    tokens: int = 0
    empty: int = 0
    skipped: int = 0
    seconds: float = 0.0
    tasks: list[dict[str, int]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.documents} documents, {self.tokens} tokens in {self.seconds:.1f}s "
            f"({self.tokens_per_s:,.0f} tokens/s) by {len(self.tasks)} task(s); skipped {self.empty} empty and "
            f"{self.skipped} malformed records; wrote {', '.join(p + '.bin/.idx' for p in self.prefixes.values())}"
        )

    @staticmethod
    def read(output_prefix: str | os.PathLike, seconds: float) -> "PreprocessResult":
        report = json.loads(Path(report_path(output_prefix)).read_text(encoding="utf-8"))
        return PreprocessResult(
            report["datasets"],
            report["documents"],
            report["tokens"],
            report["empty"],
            report["skipped"],
            seconds,
            report["tasks"],
        )


def run_preprocess(config: PreprocessConfig, options: ExecutorOptions) -> PreprocessResult | list[Any]:
    """Run (or submit) the stages; the result when they ran here, else the submitted executors.

    Inputs and tokenizer are checked first, so that a typo is one error line, not a failed job."""
    config.check()
    expand_inputs(config.input)
    load_tokenizer(config.tokenizer)
    start = time.perf_counter()
    executors = run_stages(stages(config, options), options)
    if options.executor == "slurm":
        return executors
    return PreprocessResult.read(config.output_prefix, time.perf_counter() - start)


def preprocess(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    tokenizer: str | os.PathLike,
    *,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    chunk_bytes: int = 1 << 20,
    on_error: OnError = "stop",
    progress: bool = True,
    options: ExecutorOptions | None = None,
) -> PreprocessResult:
    """Tokenize every record of ``inputs`` (JSONL, gzipped JSONL, parquet; paths, globs or
    directories) into one indexed dataset per JSON key, on this machine (``options``: local or Ray;
    default one task). The output is identical for any task count."""
    config = PreprocessConfig(
        [os.fspath(p) for p in inputs],
        os.fspath(output_prefix),
        os.fspath(tokenizer),
        json_keys=list(json_keys),
        append_eod=append_eod,
        chunk_bytes=chunk_bytes,
        on_error=on_error,
        no_progress=not progress,
    )
    options = options or ExecutorOptions()
    if options.executor == "slurm":
        raise UserError("preprocess() waits for its result; submit to Slurm with the command or stages()")
    result = run_preprocess(config, options)
    assert isinstance(result, PreprocessResult)
    return result


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
    parser.add_argument(
        "--chunk-bytes", type=int, default=1 << 20, help="text handed to the tokenizer at once (default: 1 MiB)"
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="stop",
        help="malformed JSONL lines or missing fields: stop with the file (default) or skip and count them",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    config = PreprocessConfig(
        args.input,
        args.output_prefix,
        args.tokenizer,
        json_keys=args.json_keys,
        append_eod=args.append_eod,
        chunk_bytes=args.chunk_bytes,
        on_error=args.on_error,
        no_progress=args.no_progress,
    )
    result = run_preprocess(config, executor_options_from_args(args))
    if isinstance(result, PreprocessResult):
        print(result.summary())
    else:
        print("submitted Slurm jobs " + ", ".join(str(getattr(e, "job_id", "?")) for e in result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
