"""Gather source code into JSONL shards of ``{"text", "path", "lang", "meta"}`` records.

Inputs may be directories (filtered by path patterns, language chosen by file extension), JSONL
files, parquet files in The Stack's layout (a ``content`` column) and Hugging Face datasets saved
with ``save_to_disk``. With no input, the corpus is the standard library of the running Python:
real code on every machine.

    python -m data_tools.corpus --output-prefix data/stdlib                  # the standard library
    python -m data_tools.corpus --input ~/src the-stack/*.parquet --output-prefix data/code --max-bytes 100000
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import logging
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from megaphi.progress import progress as progress_display

from data_tools.jsonl import (
    ON_ERROR_CHOICES,
    JsonlShardWriter,
    OnError,
    ReadStats,
    is_jsonl,
    is_parquet,
    iter_jsonl,
    iter_parquet,
)
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


def iter_directory(
    root: Path,
    *,
    include: Sequence[str],
    exclude: Sequence[str],
    languages: Sequence[str] | None,
    limits: SizeLimits,
    stats: CorpusStats,
) -> Iterator[dict[str, Any]]:
    """Records of the files under ``root`` (walked lazily in sorted order) whose path relative to
    ``root`` matches an ``include`` pattern, no ``exclude`` pattern (fnmatch: ``*`` crosses
    directories), and whose language by extension is in ``languages`` (None: any known language)."""
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
) -> Iterator[dict[str, Any]]:
    """Corpus records from every input in order; the standard library when ``inputs`` is empty."""
    stats = stats if stats is not None else CorpusStats()
    for path in check_inputs(inputs):
        if path.is_dir() and not _is_hf_dataset_dir(path):
            yield from iter_directory(
                path, include=include, exclude=exclude, languages=languages, limits=limits, stats=stats
            )
            continue
        for record in iter_rows(path, on_error=on_error, stats=stats):
            if limits.check(len(record["text"].encode("utf-8")), stats):
                yield record


def build_corpus(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    *,
    shard_bytes: int = 256 << 20,
    progress: bool = True,
    **options: Any,
) -> CorpusStats:
    """Write the corpus records of ``inputs`` (see :func:`iter_corpus`) to JSONL shards
    ``{output_prefix}-NNNNN.jsonl``. Raises :class:`CorpusError` when nothing is left to write."""
    check_inputs(inputs)
    stats = CorpusStats()
    records = iter_corpus(inputs, stats=stats, **options)
    with (
        JsonlShardWriter(output_prefix, max_bytes=shard_bytes) as writer,
        progress_display(records, desc="corpus", unit="files", disable=not progress) as bar,
    ):
        for record in bar:
            writer.write(record)
            stats.bytes += len(record["text"])
    stats.written, stats.shards = writer.records, [str(p) for p in writer.paths]
    if stats.written == 0:
        raise CorpusError(
            f"the corpus is empty: no file passed the filters ({stats.summary()}); "
            "check --input, --include, --lang and the size limits"
        )
    return stats


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
    parser.add_argument("--output-prefix", required=True, help="shards are written to PREFIX-00000.jsonl, ...")
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
    parser.add_argument("--shard-bytes", type=int, default=256 << 20, help="start a new shard after this many bytes")
    parser.add_argument(
        "--on-error", choices=ON_ERROR_CHOICES, default="stop", help="malformed JSONL lines: stop (default) or skip"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    unknown = [lang for lang in args.lang if lang not in LANGUAGE_OF_EXTENSION.values()]
    if unknown:
        raise CorpusError(f"unknown language {unknown[0]!r}; choose from {sorted(set(LANGUAGE_OF_EXTENSION.values()))}")
    if args.shard_bytes <= 0 or args.min_bytes < 0 or (args.max_bytes is not None and args.max_bytes < args.min_bytes):
        raise CorpusError("size limits must satisfy 0 <= --min-bytes <= --max-bytes and --shard-bytes > 0")
    stats = build_corpus(
        args.input,
        args.output_prefix,
        shard_bytes=args.shard_bytes,
        progress=not args.no_progress,
        include=args.include,
        exclude=args.exclude,
        languages=args.lang,
        limits=SizeLimits(args.min_bytes, args.max_bytes),
        on_error=args.on_error,
    )
    print(stats.summary())
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
