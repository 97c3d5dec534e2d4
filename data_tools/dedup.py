"""Remove exact and near-duplicate documents from JSONL/parquet shards (phi-1 paper, section 5), on datatrove.

Exact duplicates share a hash of their whitespace-normalised text; near duplicates have an estimated
Jaccard similarity of their word n-gram shingles of at least ``--threshold`` (MinHash, see
:mod:`data_tools.minhash` for the shingles, the hash functions and how the LSH bands follow from the
threshold). Of each group of duplicates the first in input order is kept: input order is the order
of the sorted input files, then of the records in each file, whatever ``--tasks`` is, so the kept
documents are the same for any task count and executor.

The work runs from disk in five datatrove stages (completion markers under ``PREFIX.datatrove/``, so
a rerun runs only the tasks that did not finish), with memory bounded per task, never by the corpus
(megaphi's own steps of stages 1 and 3 are in :mod:`data_tools.dedup_steps`):

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
from typing import Any

from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupFilter

from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, parse_stage_flags, run_stages
from data_tools.jsonl import ON_ERROR_CHOICES, OnError, check_on_error
from data_tools.dedup_steps import POSITION_KEY, DedupClusters, DedupSignatures, DocumentTable, minhash_config
from data_tools.minhash import (
    WORD,
    DedupError,
    DedupParams,
    Deduplicator,
    exact_key,
    lsh_bands,
    normalize,
    shingles,
    signature,
)
from data_tools.steps import Progress, RecordReader, RecordWriter, ReportStep, task_stats
from megaphi.common.cli import entry_point
from megaphi.common.files import atomic_write_text

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


@dataclass
class DedupConfig:
    """The command's options (flag ``--foo-bar`` is field ``foo_bar``)."""

    input: list[str] = field(default_factory=list)  # JSONL/parquet files, globs or directories
    output_prefix: str = ""  # kept shards go to PREFIX-TTTTT-NNNNN.jsonl
    text_key: str = DedupParams.text_key
    threshold: float = DedupParams.threshold
    num_perm: int = DedupParams.num_perm
    ngram: int = DedupParams.ngram
    on_error: OnError = "stop"  # malformed input lines: stop or skip (and count)
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


class DedupReport(ReportStep):
    """Stage 5: ``PREFIX.dedup.json`` with the counts of the run and of each task."""

    name = "dedup report"
    config: DedupConfig

    def write(self) -> None:
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
        return RecordReader(config.input, text_key=config.text_key, on_error=config.on_error, **extra)

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
    config, options = parse_stage_flags(parser, DedupConfig, argv)
    report = deduplicate(config, options)
    print(summary(report) if report else f"submitted the dedup stages; logs under {work_dir(config)}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Slurm and Ray tasks unpickle the pipeline steps by module: they must be data_tools.dedup's, not __main__'s
    from data_tools.dedup import main as module_main

    sys.exit(module_main())
