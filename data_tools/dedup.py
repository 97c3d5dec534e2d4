"""Remove exact and near-duplicate documents from JSONL/parquet shards (phi-1 paper, section 5), on datatrove.

Exact duplicates share a hash of their whitespace-normalised text; near duplicates have an estimated
Jaccard similarity of their word n-gram shingles of at least ``--threshold`` (MinHash, see
:mod:`data_tools.minhash` for the shingles, the hash functions and how the LSH bands follow from the
threshold). Of each group of duplicates the first in input order is kept: input order is the order
of the sorted input files, then of the records in each file, whatever ``--tasks`` is, so the kept
documents are the same for any task count and executor.

The work runs from disk in five datatrove stages (completion markers under ``PREFIX.datatrove/``, so
a rerun runs only the tasks that did not finish), with memory bounded per task, never by the corpus:

1. signatures (``--tasks`` tasks): per document, datatrove's per-band signature files, sorted, and a
   fixed-size row (place in the input, exact key, full signature) plus its id;
2. buckets (one task per band): datatrove merges each band's sorted files and writes the pairs of
   documents that agree on the band (the LSH candidates);
3. clusters (1 task): megaphi's step, not datatrove's: datatrove's keeps the root of a union-find
   (which depends on cluster sizes and task ranks) and takes every candidate as a duplicate. Here the
   candidates of each band form groups; walking the documents that have candidates in input order, one
   is removed when an earlier *kept* document in one of its groups is an exact match or reaches the
   threshold by estimated Jaccard (the highest one is named), else it is kept: the same decisions as
   checking each document against all kept ones in input order. Memory grows with the documents that
   have candidates, not with the corpus. Writes ``PREFIX.removed.jsonl`` and datatrove's ``.remove``
   files;
4. filter (``--tasks`` tasks): datatrove's filter drops the removed documents and the kept records are
   written unchanged to ``PREFIX-TTTTT-NNNNN.jsonl`` (task, shard);
5. report (1 task): ``PREFIX.dedup.json``, the counts of the whole run and of each task.

    python -m data_tools.dedup --input data/stdlib-*.jsonl --output-prefix data/dedup/stdlib --tasks 4

The work files (about ``num_perm * 8`` bytes a document) stay in ``PREFIX.datatrove/`` for reruns;
remove that directory once the run is done.
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
from typing import Any, Iterator

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.word_tokenizers import WordTokenizer

from data_tools.executors import (
    ExecutorOptions,
    Stage,
    add_executor_arguments,
    executor_options_from_args,
    logging_dir_for,
    run_stages,
)
from data_tools.jsonl import ON_ERROR_CHOICES, check_on_error
from data_tools.minhash import (
    HASH_CONFIG,
    WORD,
    DedupError,
    DedupParams,
    Deduplicator,
    MinHasher,
    estimated_jaccard,
    exact_key,
    lsh_bands,
    normalize,
    shingles,
    signature,
)
from data_tools.steps import Progress, RecordReader, RecordWriter, task_stats
from megaphi.common.cli import entry_point
from megaphi.common.files import atomic_open, atomic_write_text

# The in-memory pieces are part of this module's interface (synthetic-exercise dedup uses them).
__all__ = [
    "WORD",
    "DedupConfig",
    "DedupError",
    "DedupParams",
    "Deduplicator",
    "deduplicate",
    "exact_key",
    "main",
    "normalize",
    "shingles",
    "signature",
    "stages",
]

POSITION_KEY = "_dedup_position"


@dataclass
class DedupConfig:
    """The command's options (flag ``--foo-bar`` is field ``foo_bar``)."""

    input: list[str] = field(default_factory=list)  # JSONL/parquet files, globs or directories
    output_prefix: str = ""  # kept shards go to PREFIX-TTTTT-NNNNN.jsonl
    text_key: str = DedupParams.text_key
    threshold: float = DedupParams.threshold
    num_perm: int = DedupParams.num_perm
    ngram: int = DedupParams.ngram
    on_error: str = "stop"  # malformed input lines: stop or skip (and count)
    no_progress: bool = False

    @property
    def params(self) -> DedupParams:
        return DedupParams(threshold=self.threshold, num_perm=self.num_perm, ngram=self.ngram, text_key=self.text_key)

    def check(self) -> None:
        self.params.validate()
        if not self.input:
            raise DedupError("no --input given: name the JSONL/parquet files, globs or directories to deduplicate")
        if not self.output_prefix:
            raise DedupError("no --output-prefix given: kept shards go to PREFIX-TTTTT-NNNNN.jsonl")
        check_on_error(self.on_error)


def work_dir(config: DedupConfig) -> Path:
    """Where the stages keep their completion markers, logs and intermediate files."""
    return Path(f"{config.output_prefix}.datatrove")


class DocumentTable:
    """Per task, one fixed-size row per document in reading order (its place in the whole input, exact
    key, full MinHash signature) in ``TTTTT.rows``, and its id in ``TTTTT.ids`` (a JSON string a line):
    what the clusters step needs to order, confirm and name the candidates datatrove's buckets find."""

    def __init__(self, folder: Path, num_perm: int):
        self.folder = folder
        self.dtype = np.dtype([("file", "<u4"), ("record", "<u8"), ("exact", "V16"), ("sig", "<u4", (num_perm,))])

    def rows_path(self, rank: int) -> Path:
        return self.folder / f"{rank:05d}.rows"

    def ids_path(self, rank: int) -> Path:
        return self.folder / f"{rank:05d}.ids"

    def read(self, rank: int, wanted: np.ndarray, block: int = 1 << 16) -> np.ndarray:
        """Rows ``wanted`` (ascending row numbers) of a task, read block by block, so that memory holds
        those rows and one block, never the whole table."""
        found = np.empty(len(wanted), dtype=self.dtype)
        with open(self.rows_path(rank), "rb") as f:
            done = 0
            while done < len(wanted):
                start = int(wanted[done])
                f.seek(start * self.dtype.itemsize)
                chunk = np.fromfile(f, dtype=self.dtype, count=block)
                rest = wanted[done:]
                take = rest[rest < start + len(chunk)]
                if not len(take):
                    raise DedupError(f"{self.rows_path(rank)} has no row {start}: rerun the dedup command")
                found[done : done + len(take)] = chunk[take - start]
                done += len(take)
        return found

    def ids(self, rank: int, wanted: set[int]) -> dict[int, str]:
        """The ids of documents ``wanted`` (row numbers) of a task, read in one pass."""
        found: dict[int, str] = {}
        with open(self.ids_path(rank), encoding="utf-8") as f:
            for row, line in enumerate(f):
                if row in wanted:
                    found[row] = json.loads(line)
        return found


class _Words(WordTokenizer):
    """megaphi's words (``\\w+`` runs) as datatrove's word tokenizer, so that its default (spaCy) is
    neither loaded nor needed. The shingles themselves come from :func:`data_tools.minhash.shingles`."""

    def word_tokenize(self, text: str) -> list[str]:
        return WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in WORD.finditer(text)]


def minhash_config(params: DedupParams) -> MinhashConfig:
    """Datatrove's view of the MinHash settings: the bands and rows the threshold calls for."""
    bands, rows = lsh_bands(params.threshold, params.num_perm)
    return MinhashConfig(n_grams=params.ngram, num_buckets=bands, hashes_per_bucket=rows, hash_config=HASH_CONFIG)


class DedupSignatures(MinhashDedupSignature):
    """Stage 1: datatrove's signature step (per-band files, sorted and verified) on megaphi's shingles
    and hash functions (:mod:`data_tools.minhash`; datatrove's own shingles lowercase the text, replace
    numbers and punctuation and give a document shorter than ``ngram`` words no shingle at all), plus
    each document's :class:`DocumentTable` row."""

    name = "🎯 MinHash signatures (word n-grams)"

    def __init__(self, folder: Path, params: DedupParams):
        config = minhash_config(params)
        super().__init__(output_folder=os.fspath(folder / "signatures"), config=config, language=_Words())
        self.params = params
        self.bands, self.rows = config.num_buckets, config.hashes_per_bucket
        self.hasher = MinHasher(params.num_perm, params.ngram)
        self.table = DocumentTable(folder / "documents", params.num_perm)
        self._signature: np.ndarray | None = None

    def get_shingles(self, text: str) -> np.ndarray:
        return self.hasher.shingle_hashes(text)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        self._signature = self.hasher.signature_of_hashes(shingles)
        banded = self._signature[: self.bands * self.rows].reshape(self.bands, self.rows)
        return banded.tolist()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
        self.table.folder.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[int, int, bytes, np.ndarray]] = []
        with (
            open(self.table.rows_path(rank), "wb") as row_file,
            open(self.table.ids_path(rank), "w", encoding="utf-8") as id_file,
        ):

            def flush() -> None:
                np.array(rows, dtype=self.table.dtype).tofile(row_file)
                rows.clear()

            def recorded(documents: DocumentsPipeline) -> Iterator[Document]:
                # datatrove's run computes each signature when it takes the next document from here,
                # so the row of a document is written when the one after it is asked for.
                for document in documents or ():
                    file_number, record_number = document.metadata.pop(POSITION_KEY)
                    yield document
                    assert self._signature is not None, "every text has at least one shingle"
                    rows.append((file_number, record_number, exact_key(document.text), self._signature))
                    self._signature = None
                    id_file.write(json.dumps(document.id) + "\n")
                    if len(rows) == 4096:
                        flush()

            super().run(recorded(data), rank, world_size)
            flush()


class DedupClusters(PipelineStep):
    """Stage 3: the decisions (see the module's docstring), from datatrove's candidate pairs."""

    type = "🫂 - DEDUP"
    name = "🎯 MinHash clusters (first kept)"

    def __init__(self, folder: Path, params: DedupParams, tasks: int, removed_path: str):
        super().__init__()
        self.folder = folder
        self.params = params
        self.tasks = tasks
        self.removed_path = removed_path
        self.table = DocumentTable(folder / "documents", params.num_perm)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        with self.track_time():
            documents, decisions = self._decide(*self._band_groups())
            self._write(documents, decisions)

    def _band_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(document, group) pairs: the documents that agree on one band form a group. Datatrove writes
        each group as a chain of pairs (a1 a2), (a2 a3), ... sorted by band value; a document is in a
        band's file once, so a new group starts where a pair's first document is not the last one's
        second. A document is ``task << 32 | row``."""
        documents, groups, next_group = [], [], 0
        for path in sorted((self.folder / "buckets").glob("*.dups")):
            pairs = np.fromfile(path, dtype="<u4").reshape(-1, 4).astype(np.uint64)
            if not len(pairs):
                continue
            first = pairs[:, 0] << np.uint64(32) | pairs[:, 1]
            second = pairs[:, 2] << np.uint64(32) | pairs[:, 3]
            starts = np.ones(len(pairs), dtype=bool)
            starts[1:] = first[1:] != second[:-1]
            group = np.cumsum(starts) - 1 + next_group
            next_group = int(group[-1]) + 1
            documents += [first[starts], second]
            groups += [group[starts], group]
        if not documents:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return np.concatenate(documents), np.concatenate(groups)

    def _decide(
        self, members: np.ndarray, groups: np.ndarray
    ) -> tuple[list[tuple[int, int]], dict[int, tuple[str, int, float]]]:
        """The documents with candidates as (task, row), in input order, and the decisions: removed
        document -> (reason, the kept document it duplicates, estimated Jaccard), documents by their
        number in that list."""
        keys, member_index = np.unique(members, return_inverse=True)
        task = (keys >> np.uint64(32)).astype(np.int64)
        row = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
        table = np.empty(len(keys), dtype=self.table.dtype)  # the rows of these documents only
        for t in np.unique(task):
            table[task == t] = self.table.read(int(t), row[task == t])  # keys are sorted: rows ascend
        order = np.lexsort((table["record"], table["file"]))
        number = np.empty(len(keys), np.int64)
        number[order] = np.arange(len(keys))
        # each document's groups, as slices of one array sorted by document number
        by_document = np.argsort(number[member_index], kind="stable")
        group_of = groups[by_document]
        bounds = np.searchsorted(number[member_index][by_document], np.arange(len(keys) + 1)).tolist()
        documents = list(zip(task[order].tolist(), row[order].tolist()))
        exact, signatures = table["exact"], table["sig"]  # by key: document d is key at[d]
        at = order.tolist()

        # the kept members of each group: most groups have one at most, so the first one in a list
        first_kept: list[int] = [-1] * (int(groups.max()) + 1 if len(groups) else 0)
        more_kept: dict[int, list[int]] = {}
        decisions: dict[int, tuple[str, int, float]] = {}
        threshold = self.params.threshold
        for d in range(len(documents)):
            mine_groups = group_of[bounds[d] : bounds[d + 1]].tolist()
            best: tuple[str, int, float] | None = None
            candidates = {k for g in mine_groups if first_kept[g] >= 0 for k in (first_kept[g], *more_kept.get(g, ()))}
            for k in sorted(candidates):
                if exact[at[k]] == exact[at[d]]:
                    best = ("exact", k, 1.0)  # a normalised text has one kept copy at most
                    break
                jaccard = estimated_jaccard(signatures[at[d]], signatures[at[k]])
                if jaccard >= threshold and (best is None or jaccard > best[2]):
                    best = ("near", k, jaccard)  # the most similar; of equals, the first
            if best is None:
                for g in mine_groups:
                    if first_kept[g] < 0:
                        first_kept[g] = d
                    else:
                        more_kept.setdefault(g, []).append(d)
            else:
                decisions[d] = best
        self.stat_update("documents_with_candidates", value=len(documents))
        return documents, decisions

    def _write(
        self,
        documents: list[tuple[int, int]],
        decisions: dict[int, tuple[str, int, float]],
    ) -> None:
        wanted: dict[int, set[int]] = {t: set() for t in range(self.tasks)}
        for d, (_, k, _) in decisions.items():
            for t, r in (documents[d], documents[k]):
                wanted[t].add(r)
        ids = {t: self.table.ids(t, wanted[t]) for t in range(self.tasks) if wanted[t]}
        counts = {t: {"exact": 0, "near": 0} for t in range(self.tasks)}
        removed_rows: dict[int, list[int]] = {t: [] for t in range(self.tasks)}
        with atomic_open(self.removed_path) as removed:
            for d in sorted(decisions):  # input order
                reason, k, jaccard = decisions[d]
                (t, r), (kt, kr) = documents[d], documents[k]
                line = {"id": ids[t][r], "reason": reason, "duplicate_of": ids[kt][kr], "jaccard": round(jaccard, 4)}
                removed.write(json.dumps(line) + "\n")
                removed_rows[t].append(r)
                counts[t][reason] += 1
                self.stat_update(f"removed_{reason}")
        remove_folder = self.folder / "remove"
        remove_folder.mkdir(parents=True, exist_ok=True)
        for t, task_rows in removed_rows.items():
            # datatrove's filter reads, per task, the row numbers of the documents to drop, ascending
            np.array(sorted(task_rows), dtype="<u4").tofile(remove_folder / f"{t:06d}.remove")
        atomic_write_text(os.fspath(self.folder / "clusters.json"), json.dumps({str(t): c for t, c in counts.items()}))


class DedupReport(PipelineStep):
    """Stage 5: ``PREFIX.dedup.json`` with the counts of the run and of each task."""

    type = "📊 - STATS"
    name = "dedup report"

    def __init__(self, config: DedupConfig, tasks: int):
        super().__init__()
        self.config = config
        self.tasks = tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        config, folder = self.config, work_dir(self.config)
        table = DocumentTable(folder / "data" / "documents", config.num_perm)
        removed = json.loads((folder / "data" / "clusters.json").read_text())
        prefix = Path(config.output_prefix)
        per_task = []
        for t in range(self.tasks):
            documents = table.rows_path(t).stat().st_size // table.dtype.itemsize
            read = task_stats(logging_dir_for(config.output_prefix, "signatures"), t).get("records", {})
            exact, near = removed[str(t)]["exact"], removed[str(t)]["near"]
            per_task.append(
                {
                    "task": t,
                    "documents": documents,
                    "kept": documents - exact - near,
                    "exact_duplicates": exact,
                    "near_duplicates": near,
                    "malformed_skipped": int(read.get("skipped_lines", 0)),
                    "shards": sorted(str(p) for p in prefix.parent.glob(f"{prefix.name}-{t:05d}-[0-9]*.jsonl")),
                }
            )
        totals = {
            key: sum(task[key] for task in per_task)
            for key in ("documents", "kept", "exact_duplicates", "near_duplicates", "malformed_skipped")
        }
        if totals["documents"] == 0:
            raise DedupError(f"inputs {config.input} hold no records: nothing to deduplicate")
        bands, rows = lsh_bands(config.threshold, config.num_perm)
        report = {
            **vars(config.params),
            "lsh_bands": bands,
            "lsh_rows": rows,
            **totals,
            "shards": [shard for task in per_task for shard in task["shards"]],
            "removed": f"{config.output_prefix}.removed.jsonl",
            "tasks": per_task,
        }
        atomic_write_text(f"{config.output_prefix}.dedup.json", json.dumps(report, indent=2) + "\n")


def stages(config: DedupConfig, options: ExecutorOptions) -> list[Stage]:
    """The five stages of the command (see the module's docstring), the report last."""
    config.check()
    options.check()
    params = config.params
    folder = work_dir(config) / "data"
    bands, _ = lsh_bands(params.threshold, params.num_perm)

    def reader(**extra: Any) -> RecordReader:
        return RecordReader(config.input, text_key=config.text_key, on_error=config.on_error, **extra)  # type: ignore[arg-type]

    # what every stage's outputs depend on: a rerun with other settings is refused (data_tools.executors)
    settings = {**{k: v for k, v in dataclasses.asdict(config).items() if k != "no_progress"}, "tasks": options.tasks}

    def stage(name: str, pipeline: list[Any], tasks: int | None = None) -> Stage:
        return Stage(name, pipeline, logging_dir_for(config.output_prefix, name), tasks, settings=settings)

    return [
        stage(
            "signatures",
            [
                reader(position_key=POSITION_KEY),
                Progress("dedup", disable=config.no_progress),
                DedupSignatures(folder, params),
            ],
        ),
        stage(
            "buckets",
            [
                MinhashDedupBuckets(
                    input_folder=os.fspath(folder / "signatures"),
                    output_folder=os.fspath(folder / "buckets"),
                    config=minhash_config(params),
                )
            ],
            tasks=bands,
        ),
        stage(
            "clusters",
            [DedupClusters(folder, params, options.tasks, f"{config.output_prefix}.removed.jsonl")],
            tasks=1,
        ),
        stage(
            "filter",
            [reader(), MinhashDedupFilter(os.fspath(folder / "remove")), RecordWriter(config.output_prefix)],
        ),
        stage("report", [DedupReport(config, options.tasks)], tasks=1),
    ]


def deduplicate(config: DedupConfig, options: ExecutorOptions | None = None) -> dict[str, Any] | None:
    """Run the stages; locally, the report (``PREFIX.dedup.json``) when they are done, else None (the
    stages were submitted as jobs)."""
    options = options or ExecutorOptions()
    run_stages(stages(config, options), options)
    if options.executor == "slurm":
        return None
    return json.loads(Path(f"{config.output_prefix}.dedup.json").read_text())


def summary(report: dict[str, Any]) -> str:
    return (
        f"read {report['documents']} documents: kept {report['kept']}, removed {report['exact_duplicates']} exact "
        f"and {report['near_duplicates']} near duplicates ({report['malformed_skipped']} malformed records skipped)"
    )


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.dedup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = DedupConfig()
    parser.add_argument("--input", nargs="+", required=True, help="JSONL/parquet files, globs or directories")
    parser.add_argument("--output-prefix", required=True, help="kept shards go to PREFIX-TTTTT-NNNNN.jsonl")
    parser.add_argument("--text-key", default=defaults.text_key, help="record field holding the document text")
    parser.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help=f"estimated Jaccard similarity that makes a near duplicate (default: {defaults.threshold})",
    )
    parser.add_argument(
        "--num-perm", type=int, default=defaults.num_perm, help=f"MinHash hash functions (default: {defaults.num_perm})"
    )
    parser.add_argument(
        "--ngram", type=int, default=defaults.ngram, help=f"words per shingle (default: {defaults.ngram})"
    )
    parser.add_argument(
        "--on-error", choices=ON_ERROR_CHOICES, default=defaults.on_error, help="malformed input lines: stop or skip"
    )
    parser.add_argument("--no-progress", action="store_true")
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    config = DedupConfig(
        input=args.input,
        output_prefix=args.output_prefix,
        text_key=args.text_key,
        threshold=args.threshold,
        num_perm=args.num_perm,
        ngram=args.ngram,
        on_error=args.on_error,
        no_progress=args.no_progress,
    )
    options = executor_options_from_args(args)
    report = deduplicate(config, options)
    print(summary(report) if report else f"submitted the dedup stages; logs under {work_dir(config)}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Slurm and Ray tasks unpickle the pipeline steps by module: they must be data_tools.dedup's, not __main__'s
    from data_tools.dedup import main as module_main

    sys.exit(module_main())
