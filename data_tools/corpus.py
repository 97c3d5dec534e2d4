"""Gather source code into JSONL shards of ``{"id", "text", "path", "lang", "meta"}`` records.

Inputs may be directories (filtered by path patterns, language chosen by file extension), JSONL
files, parquet files in The Stack's layout (a ``content`` column) and Hugging Face datasets saved
with ``save_to_disk``. With no input, the corpus is the standard library of the running Python:
real code on every machine.

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
import fnmatch
import glob
import itertools
import json
import logging
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
from data_tools.jsonl import (
    ON_ERROR_CHOICES,
    OnError,
    ReadStats,
    is_jsonl,
    is_parquet,
    iter_jsonl,
    iter_parquet,
)
from data_tools.steps import RecordWriter, document_from_record
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError

log = logging.getLogger(__name__)

LANGUAGE_OF_EXTENSION = {
    ".py": "python",
    ".pyi": "python",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".js": "javascript",
    ".ts": "typescript",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".sh": "shell",
    ".md": "markdown",
    ".rst": "restructuredtext",
}
# fields that hold the text or the file path in the common code dataset layouts
TEXT_FIELDS = ("text", "content")
PATH_FIELDS = ("path", "max_stars_repo_path", "file_path")
DEFAULT_EXCLUDE = ("*/site-packages/*", "*/dist-packages/*", "*/__pycache__/*")  # matched against full paths


class CorpusError(UserError):
    """Corpus inputs that cannot be gathered as asked."""


@dataclass
class CorpusStats:
    files: int = 0
    written: int = 0
    bytes: int = 0
    undecodable: int = 0
    too_small: int = 0
    too_large: int = 0
    read: ReadStats = field(default_factory=ReadStats)
    shards: list[str] = field(default_factory=list)

    def merge(self, other: "CorpusStats") -> None:
        for name in ("files", "written", "bytes", "undecodable", "too_small", "too_large"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.read.merge(other.read)
        self.shards.extend(other.shards)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CorpusStats":
        return cls(**{**data, "read": ReadStats(**data["read"])})

    def summary(self) -> str:
        return (
            f"wrote {self.written} documents ({self.bytes / 1e6:.1f} MB) to {len(self.shards)} shard(s); "
            f"skipped {self.undecodable} undecodable, {self.too_small} too small, {self.too_large} too large, "
            f"{self.read.skipped} malformed records"
        )


@dataclass(frozen=True)
class SizeLimits:
    min_bytes: int = 1
    max_bytes: int | None = None

    def check(self, size: int, stats: CorpusStats) -> bool:
        if size < self.min_bytes:
            stats.too_small += 1
            return False
        if self.max_bytes is not None and size > self.max_bytes:
            stats.too_large += 1
            return False
        return True


def stdlib_dir() -> Path:
    """The running interpreter's standard library (sysconfig's ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").is_file()
        or (path / "dataset_dict.json").is_file()
        or (path / "state.json").is_file()
    )


def walk_directory(
    root: Path, *, include: Sequence[str], exclude: Sequence[str], languages: Sequence[str] | None
) -> Iterator[tuple[Path, str, str]]:
    """``(path, path relative to root, language)`` of the files under ``root`` (walked lazily in sorted
    order) whose relative path matches an ``include`` pattern, no ``exclude`` pattern (fnmatch: ``*``
    crosses directories), and whose language by extension is in ``languages`` (None: any known)."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not _matches(os.path.join(directory, d, ""), exclude))
        for name in sorted(files):
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            lang = LANGUAGE_OF_EXTENSION.get(path.suffix.lower())
            if (
                lang is None
                or (languages and lang not in languages)
                or not _matches(relative, include)
                or _matches(str(path), exclude)
                or not path.is_file()
            ):
                continue
            yield path, relative, lang


def iter_directory(
    root: Path,
    *,
    include: Sequence[str],
    exclude: Sequence[str],
    languages: Sequence[str] | None,
    limits: SizeLimits,
    stats: CorpusStats,
    take: Callable[[], bool] = lambda: True,
) -> Iterator[dict[str, Any]]:
    """Records of the files :func:`walk_directory` finds under ``root``. ``take`` is asked once per such
    file, in order: a task reads only the files it says yes to."""
    for path, relative, lang in walk_directory(root, include=include, exclude=exclude, languages=languages):
        if not take():
            continue
        stats.files += 1
        if not limits.check(path.stat().st_size, stats):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            stats.undecodable += 1
            continue
        # the path under its input is what training reports show; the full path is unique across inputs
        yield {"id": str(path), "text": text, "path": relative, "lang": lang, "meta": {"root": str(root)}}


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _record_from_row(row: dict[str, Any], source: str, position: str, number: int) -> dict[str, Any]:
    """Normalise a JSONL/parquet/HF row to the corpus record shape, keeping other fields as meta.

    ``id`` is the row's own id when it has one, else ``source:number`` (its file and record number):
    unique either way, where paths are not (The Stack repeats them across repositories)."""
    text_field = next((f for f in TEXT_FIELDS if f in row), None)
    if text_field is None or not isinstance(row[text_field], str):
        raise CorpusError(f"{position}: no string in field {' or '.join(TEXT_FIELDS)}; fields are {sorted(row)}")
    path = next((row[f] for f in PATH_FIELDS if isinstance(row.get(f), str)), source)
    lang = row.get("lang") or LANGUAGE_OF_EXTENSION.get(Path(path).suffix.lower())
    known = {text_field, "id", "lang", "meta", *PATH_FIELDS}
    meta = dict(row.get("meta") or {}) if isinstance(row.get("meta"), dict) else {}
    meta.update({k: v for k, v in row.items() if k not in known and isinstance(v, (str, int, float, bool))})
    own_id = row.get("id")
    record_id = str(own_id) if isinstance(own_id, (str, int)) and own_id != "" else f"{source}:{number}"
    return {"id": record_id, "text": row[text_field], "path": path, "lang": lang, "meta": meta}


def iter_rows(path: Path, *, on_error: OnError, stats: CorpusStats) -> Iterator[dict[str, Any]]:
    if is_jsonl(path):
        rows = iter_jsonl(path, on_error=on_error, stats=stats.read)
    elif is_parquet(path):
        rows = iter_parquet(path, stats=stats.read)
    else:
        import datasets

        loaded = datasets.load_from_disk(str(path))
        splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
        rows = (row for split in splits for row in split)
    for number, row in enumerate(rows, start=1):
        stats.files += 1
        try:
            yield _record_from_row(row, str(path), f"{path}: record {number}", number)
        except CorpusError as exc:  # a record without usable text: skipped and counted like a bad line
            if on_error == "stop":
                raise CorpusError(f"{exc} (pass --on-error skip to skip such records)") from None
            stats.read.skip(str(exc))


def check_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The input paths (the standard library when none), globs expanded, each checked to exist here."""
    paths: list[Path] = []
    for raw in inputs:
        pattern = os.path.expanduser(os.fspath(raw))
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise CorpusError(f"input {pattern} matches no files")
        paths.extend(Path(m) for m in matches)
    paths = paths or [stdlib_dir()]
    for path in paths:
        if not path.exists():
            raise CorpusError(f"input {path} does not exist")
        if path.is_file() and not (is_jsonl(path) or is_parquet(path)):
            raise CorpusError(f"input {path} is not a directory, JSONL, parquet or saved Hugging Face dataset")
    return paths


def iter_corpus(
    inputs: Sequence[str | os.PathLike] = (),
    *,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    languages: Sequence[str] | None = ("python",),
    limits: SizeLimits = SizeLimits(),
    on_error: OnError = "stop",
    stats: CorpusStats | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, Any]]:
    """Corpus records from every input in order; the standard library when ``inputs`` is empty.

    A unit is a file found in a directory, or a JSONL/parquet file or saved dataset given as input.
    Task ``rank`` of ``world_size`` reads its contiguous block of the units in input order (blocks
    differ by at most one unit; with several tasks the directories are walked once more first, to
    count them), so the tasks' records in rank order are the one-task records in the same order."""
    stats = stats if stats is not None else CorpusStats()
    paths = check_inputs(inputs)

    def is_directory(path: Path) -> bool:
        return path.is_dir() and not _is_hf_dataset_dir(path)

    first, end = 0, None
    if world_size > 1:
        units = sum(
            sum(1 for _ in walk_directory(path, include=include, exclude=exclude, languages=languages))
            if is_directory(path)
            else 1
            for path in paths
        )
        first, end = rank * units // world_size, (rank + 1) * units // world_size
    numbers = itertools.count()

    def take() -> bool:
        number = next(numbers)
        return first <= number and (end is None or number < end)

    for path in paths:
        if is_directory(path):
            yield from iter_directory(
                path, include=include, exclude=exclude, languages=languages, limits=limits, stats=stats, take=take
            )
            continue
        if not take():
            continue
        for record in iter_rows(path, on_error=on_error, stats=stats):
            if limits.check(len(record["text"].encode("utf-8")), stats):
                yield record


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
    on_error: str = "stop"  # malformed records: stop or skip
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


class CorpusReport(PipelineStep):
    """Sums the corpus tasks' counts into ``PREFIX.corpus.json`` (totals, one row per task), or stops
    when no file passed the filters."""

    name = "corpus report"
    type = "📊 - STATS"

    def __init__(self, config: CorpusConfig, stats_dir: str, tasks: int):
        super().__init__()
        self.config = config
        self.stats_dir = stats_dir
        self.tasks = tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        yield from data or ()
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
        report_path(self.config).write_text(json.dumps(report, indent=1) + "\n")


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
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    config = CorpusConfig(
        output_prefix=args.output_prefix,
        input=args.input,
        include=args.include,
        exclude=args.exclude,
        lang=args.lang,
        min_bytes=args.min_bytes,
        max_bytes=args.max_bytes,
        shard_bytes=args.shard_bytes,
        on_error=args.on_error,
        no_progress=args.no_progress,
    )
    config.check()
    options = executor_options_from_args(args)
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
