"""Gather source code into JSONL shards of ``{"id", "text", "path", "lang", "meta"}`` records.

Inputs may be directories (filtered by path patterns, language chosen by file extension), JSONL
files, parquet files in The Stack's layout (a ``content`` column) and Hugging Face datasets saved
with ``save_to_disk`` (read by :mod:`data_tools.corpus_sources`). With no input, the corpus is the
standard library of the running Python: real code on every machine.

The corpus is a datatrove stage (:mod:`data_tools.executors`): task ``rank`` of ``--tasks`` reads its
contiguous block of the inputs' units, a unit being one file of a directory (in sorted order) or one
JSONL/parquet file or saved dataset, and writes ``PREFIX-{rank:05d}-NNNNN.jsonl``: the shards in task
order hold the same records in the same order for any task count. A last one-task
stage sums the tasks' counts into ``PREFIX.corpus.json`` (totals and one row per task).

    python -m data_tools.corpus --output-prefix data/stdlib                  # the standard library
    python -m data_tools.corpus --input ~/src the-stack/*.parquet --output-prefix data/code --max-bytes 100000 \
        --tasks 64 --executor slurm --slurm-partition cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, parse_stage_flags, run_stages
from data_tools.corpus_sources import (
    DEFAULT_EXCLUDE,
    LANGUAGE_OF_EXTENSION,
    CorpusError,
    CorpusStats,
    SizeLimits,
    check_inputs,
    iter_corpus,
)
from data_tools.jsonl import ON_ERROR_CHOICES, OnError
from data_tools.steps import RecordWriter, ReportStep, document_from_record
from megaphi.common.cli import entry_point
from megaphi.common.files import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class CorpusConfig:
    """The options of ``python -m data_tools.corpus`` (flag ``--min-bytes`` is field ``min_bytes``)."""

    output_prefix: str = ""  # shards are PREFIX-{task:05d}-NNNNN.jsonl
    input: list[str] = field(default_factory=list)  # directories, JSONL, parquet, saved HF datasets; [] = stdlib
    include: list[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns of paths under input directories
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))  # fnmatch patterns of full paths
    lang: list[str] = field(default_factory=lambda: ["python"])  # languages kept from directories, by extension
    min_bytes: int = 1
    max_bytes: int | None = None
    shard_bytes: int = 256 << 20  # a task starts a new shard after this many bytes
    on_error: OnError = "stop"  # malformed records: stop or skip
    no_progress: bool = False

    def check(self, prefix: str = "") -> None:
        where = f"{prefix}." if prefix else ""
        unknown = [lang for lang in self.lang if lang not in LANGUAGE_OF_EXTENSION.values()]
        if unknown:
            raise CorpusError(
                f"{where}lang: unknown language {unknown[0]!r}; choose from {sorted(set(LANGUAGE_OF_EXTENSION.values()))}"
                if where
                else f"unknown language {unknown[0]!r}; choose from {sorted(set(LANGUAGE_OF_EXTENSION.values()))}"
            )
        if (
            self.shard_bytes <= 0
            or self.min_bytes < 0
            or (self.max_bytes is not None and self.max_bytes < self.min_bytes)
        ):
            raise CorpusError(
                f"{where or '--'}size limits must satisfy 0 <= min-bytes <= max-bytes and shard-bytes > 0"
            )
        if self.on_error not in ON_ERROR_CHOICES:
            raise CorpusError(f"{where}on_error: choose one of {', '.join(ON_ERROR_CHOICES)}, got {self.on_error!r}")

    def iter_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`iter_corpus` that these options set."""
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "languages": list(self.lang),
            "limits": SizeLimits(self.min_bytes, self.max_bytes),
            "on_error": self.on_error,
        }


class CorpusReader(PipelineStep):
    """The corpus records of task ``rank``'s share of the inputs (see :func:`iter_corpus`) as documents.

    The inputs are expanded and walked when the task runs, and each task leaves its counts in
    ``stats_dir/NNNNN.json`` for the report."""

    name = "corpus"
    type = "📖 - READER"

    def __init__(self, config: CorpusConfig, stats_dir: str):
        super().__init__()
        self.config = config
        self.stats_dir = stats_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        stats = CorpusStats()
        records = iter_corpus(
            self.config.input, stats=stats, rank=rank, world_size=world_size, **self.config.iter_options()
        )
        for index, record in enumerate(records):
            stats.written += 1
            stats.bytes += len(record["text"])
            self.stat_update("documents")
            yield document_from_record(record, index)
        path = Path(self.stats_dir, f"{rank:05d}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(stats)) + "\n")


def shards(config: CorpusConfig, task: int) -> list[str]:
    """The shards task ``task`` wrote (see :class:`~data_tools.steps.RecordWriter`)."""
    prefix = Path(config.output_prefix)
    return sorted(str(p) for p in prefix.parent.glob(f"{prefix.name}-{task:05d}-{'[0-9]' * 5}.jsonl"))


class CorpusReport(ReportStep):
    """Sums the corpus tasks' counts into ``PREFIX.corpus.json`` (totals, one row per task), or stops
    when no file passed the filters."""

    name = "corpus report"
    config: CorpusConfig

    def __init__(self, config: CorpusConfig, stats_dir: str, tasks: int):
        super().__init__(config, tasks)
        self.stats_dir = stats_dir

    def write(self) -> None:
        per_task = [
            CorpusStats.from_dict(json.loads(Path(self.stats_dir, f"{task:05d}.json").read_text()))
            for task in range(self.tasks)
        ]
        total = CorpusStats()
        for task, stats in enumerate(per_task):
            stats.shards = shards(self.config, task)
            total.merge(stats)
        if total.written == 0:
            raise CorpusError(
                f"the corpus is empty: no file passed the filters ({total.summary()}); "
                "check --input, --include, --lang and the size limits"
            )
        report = {
            "summary": total.summary(),
            "total": dataclasses.asdict(total),
            "tasks": [{"task": task, **dataclasses.asdict(stats)} for task, stats in enumerate(per_task)],
        }
        atomic_write_text(report_path(self.config), json.dumps(report, indent=1) + "\n")


def report_path(config: CorpusConfig) -> Path:
    return Path(f"{config.output_prefix}.corpus.json")


def stages(config: CorpusConfig, options: ExecutorOptions) -> list[Stage]:
    """The corpus stage (``options.tasks`` tasks writing shards) and its one-task report."""
    if not config.output_prefix:
        raise CorpusError("corpus: give an output prefix (--output-prefix)")
    read = logging_dir_for(config.output_prefix, "corpus")
    stats_dir = f"{read}/corpus_stats"
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "no_progress"}
    return [
        Stage(
            "corpus",
            [CorpusReader(config, stats_dir), RecordWriter(config.output_prefix, shard_bytes=config.shard_bytes)],
            read,
            settings=settings,
        ),
        Stage(
            "corpus-report",
            [CorpusReport(config, stats_dir, options.tasks)],
            logging_dir_for(config.output_prefix, "corpus-report"),
            tasks=1,
        ),
    ]


def read_report(config: CorpusConfig) -> CorpusStats:
    """The totals of a finished corpus run."""
    return CorpusStats.from_dict(json.loads(report_path(config).read_text())["total"])


def build_corpus(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    *,
    shard_bytes: int = 256 << 20,
    options: ExecutorOptions | None = None,
    languages: Sequence[str] | None = ("python",),
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    limits: SizeLimits = SizeLimits(),
    on_error: OnError = "stop",
    progress: bool = False,
) -> CorpusStats:
    """Write the corpus records of ``inputs`` (see :func:`iter_corpus`) to JSONL shards
    ``{output_prefix}-{task:05d}-NNNNN.jsonl`` with the local executor (one task unless ``options``
    say otherwise). Raises when nothing is left to write. ``progress`` is accepted from older callers
    and changes nothing: the tasks log to the stage's logging directory."""
    check_inputs(inputs)
    config = CorpusConfig(
        output_prefix=os.fspath(output_prefix),
        input=[os.fspath(i) for i in inputs],
        include=list(include),
        exclude=list(exclude),
        lang=list(languages) if languages else sorted(set(LANGUAGE_OF_EXTENSION.values())),
        min_bytes=limits.min_bytes,
        max_bytes=limits.max_bytes,
        shard_bytes=shard_bytes,
        on_error=on_error,
    )
    config.check()
    options = options or ExecutorOptions()
    run_stages(stages(config, options), options)
    return read_report(config)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.corpus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input",
        nargs="*",
        default=[],
        help="directories, JSONL, parquet files or saved HF datasets (default: this Python's standard library)",
    )
    parser.add_argument(
        "--output-prefix", required=True, help="shards are written to PREFIX-TTTTT-00000.jsonl, ... (TTTTT: the task)"
    )
    parser.add_argument(
        "--include",
        nargs="*",
        default=["*"],
        help="fnmatch patterns of paths relative to input directories, '*' crosses directories (default: *)",
    )
    parser.add_argument(
        "--exclude", nargs="*", default=list(DEFAULT_EXCLUDE), help="fnmatch patterns of paths to leave out"
    )
    parser.add_argument(
        "--lang",
        nargs="*",
        default=["python"],
        help=f"languages to keep from directories, by extension (default: python; known: {', '.join(sorted(set(LANGUAGE_OF_EXTENSION.values())))})",
    )
    parser.add_argument("--min-bytes", type=int, default=1, help="drop files smaller than this")
    parser.add_argument("--max-bytes", type=int, default=None, help="drop files larger than this")
    parser.add_argument(
        "--shard-bytes", type=int, default=256 << 20, help="a task starts a new shard after this many bytes"
    )
    parser.add_argument(
        "--on-error", choices=ON_ERROR_CHOICES, default="stop", help="malformed JSONL lines: stop (default) or skip"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="accepted for old command lines: no progress bar is shown (each task logs to PREFIX.datatrove/)",
    )
    config, options = parse_stage_flags(parser, CorpusConfig, argv)
    config.check()
    check_inputs(config.input)
    executors = run_stages(stages(config, options), options)
    if options.executor == "slurm" and not options.slurm.wait:
        print(
            f"submitted Slurm jobs {', '.join(str(e.job_id) for e in executors)}; the summary will be in {report_path(config)}"
        )
    else:
        print(read_report(config).summary())
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Slurm and Ray tasks unpickle the pipeline steps by module: they must be data_tools.corpus's, not __main__'s
    from data_tools.corpus import main as module_main

    sys.exit(module_main())
