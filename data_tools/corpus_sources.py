"""The corpus stage's inputs, read as ``{"id", "text", "path", "lang", "meta"}`` records: source files
under directories (filtered by path patterns, language chosen by file extension), JSONL files, parquet
files in The Stack's layout (a ``content`` column) and Hugging Face datasets saved with
``save_to_disk``; with no input, the standard library of the running Python. :func:`iter_corpus`
reads task ``rank``'s block of them (see :mod:`data_tools.corpus` for the stage that writes them).
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from data_tools.jsonl import OnError, ReadStats, is_jsonl, is_parquet, iter_jsonl, iter_parquet
from megaphi.common.errors import UserError

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
