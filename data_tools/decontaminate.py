"""Remove training items that resemble HumanEval / MBPP problems, and report how close each problem's
nearest training items are (phi-1 paper, section 5 and Table 3).

Three signals, as in the paper:
- n-gram overlap, on every input: a training item sharing any word 13-gram with a benchmark problem
  (its prompt and reference solution) is removed;
- embedding distance, on the ``--deep-input`` datasets only: the L2 distance between L2-normalised
  embeddings (``data_tools.embed``; MiniLM by default, or a code model's mean-pooled hidden states).
  Each such item is compared by AST with its ``--top-k`` nearest problems, and the report lists each
  problem's ``--top-k`` nearest items;
- AST match rate, on the ``--deep-input`` datasets: the similarity of the problem's AST node-type
  sequence to the item's, whole or any one function of it (difflib's ratio on pre-order node-type
  sequences; names, constants, docstrings, annotations and imports ignored). An item at or above
  ``--ast-threshold`` with one of its nearest problems is removed. Problems whose AST has fewer than
  ``--min-ast-nodes`` nodes (one-liners such as ``return len(string)``) are judged by n-grams alone:
  their shape occurs in most code, so an AST match there says nothing.

Which dataset gets which checks: ``--input`` datasets get the 13-gram check alone (cheap enough for
the whole corpus); ``--deep-input`` datasets get all three (the paper ran the embedding and AST
analysis on its synthetic exercises; on a CPU the embedding pass is the cost, ~10 items/s per core,
hence ``--device auto``: fp16 on the task's GPU where it has one). In a recipe YAML the same split is
``input: [...]`` and ``deep_input: [...]``. Every decision is made per item (an item's own nearest
problems, not each problem's nearest items across the corpus), so the kept items do not depend on how
the input is split into tasks.

The run is a datatrove stage of ``--tasks`` tasks (``data_tools.executors``), each loading the
benchmark problems once, then a one-task report stage. Outputs:
- ``PREFIX-RRRRR-NNNNN.jsonl``: the kept records of task RRRRR, unchanged;
- ``PREFIX.removed.jsonl``: one line per removed item: id, reason, benchmark, task_id;
- ``PREFIX.decontamination.json`` and ``.md``: removed counts per benchmark and check, a per-task view,
  and per problem its closest training items with both scores and, for every tau in ``--report-taus``
  (the paper's 0.95, 0.9, 0.85, 0.8), whether it has a training item with an AST match rate >= tau:
  the split into "similar" and "non-similar" problems of the paper's Table 3.

    python -m data_tools.decontaminate --input data/dedup-*.jsonl --deep-input data/exercises-*.jsonl \\
        --output-prefix data/clean --benchmarks humaneval mbpp --mbpp-path mbpp.jsonl --tasks 8
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from data_tools.contamination import (
    BENCHMARKS,
    WORD,
    BenchmarkItem,
    DecontaminationError,
    ast_match_rate,
    ast_node_types,
    ast_units,
    load_benchmark_items,
    word_ngrams,
)
from data_tools.embed import DEVICES, add_device_argument
from data_tools.executors import (
    ExecutorOptions,
    Stage,
    add_executor_arguments,
    executor_options_from_args,
    logging_dir_for,
    run_stages,
)
from data_tools.jsonl import ON_ERROR_CHOICES, OnError, check_on_error, iter_jsonl
from data_tools.steps import RecordReader, RecordWriter
from megaphi.common.cli import entry_point
from megaphi.common.files import atomic_open, atomic_write_text

PAPER_TAUS = (0.95, 0.9, 0.85, 0.8)
AST_MATCH = "ast match"
DEEP_KEY = "_decontaminate_deep"  # marks a --deep-input document between the reader and the filter
EMBED_BATCH = 256  # documents embedded together (one matrix product against the problems per batch)


@dataclass
class DecontaminateConfig:
    """The options of ``python -m data_tools.decontaminate`` (flag ``--foo-bar`` is field ``foo_bar``)."""

    input: list[str] = field(default_factory=list)  # checked by 13-gram overlap
    output_prefix: str = ""
    deep_input: list[str] = field(default_factory=list)  # checked by 13-gram overlap, embedding and AST
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    mbpp_path: str | None = None  # MBPP's mbpp.jsonl; None: the Hugging Face hub
    problems: list[str] = field(default_factory=list)  # only these task ids; empty: every problem
    text_key: str = "text"
    ngram: int = 13
    top_k: int = 10
    ast_threshold: float = 0.95
    min_ast_nodes: int = 20
    report_taus: list[float] = field(default_factory=lambda: list(PAPER_TAUS))
    embedder: str = "minilm"
    device: str = "auto"  # where --deep-input items are embedded: auto, cpu or cuda (data_tools.embed)
    on_error: OnError = "stop"

    def validate(self) -> None:
        if not self.input and not self.deep_input:
            raise DecontaminationError("no inputs: give --input (13-gram check) and/or --deep-input (all checks)")
        both = sorted(set(self.input) & set(self.deep_input))
        if both:
            raise DecontaminationError(f"{both[0]} is in both --input and --deep-input: name each input once")
        if not self.output_prefix:
            raise DecontaminationError("no --output-prefix: kept shards go to PREFIX-RRRRR-NNNNN.jsonl")
        if not self.benchmarks:
            raise DecontaminationError("no --benchmarks: choose humaneval and/or mbpp")
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise DecontaminationError(f"unknown benchmark {unknown[0]!r}: choose humaneval and/or mbpp")
        if self.ngram < 1:
            raise DecontaminationError(f"--ngram must be at least 1, got {self.ngram}")
        if self.top_k < 1:
            raise DecontaminationError(f"--top-k must be at least 1, got {self.top_k}")
        for tau in (self.ast_threshold, *self.report_taus):
            if not 0.0 < tau <= 1.0:
                raise DecontaminationError(f"AST match thresholds must be in (0, 1], got {tau}")
        if self.device not in DEVICES:
            raise DecontaminationError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        check_on_error(self.on_error)

    @property
    def ngram_reason(self) -> str:
        return f"{self.ngram}-gram overlap"


def task_files_dir(output_prefix: str | os.PathLike) -> Path:
    """Where each task leaves its removed items and its share of the report for the report stage."""
    return Path(f"{os.fspath(output_prefix)}.decontamination-tasks")


class DeepInputReader(RecordReader):
    """Reads the ``--deep-input`` records after those of the steps before, marking them for the
    embedding and AST checks (the mark is taken off before the record is written back)."""

    name = "deep-check records"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if data:
            yield from data
        for document in super().run(None, rank, world_size):
            document.metadata[DEEP_KEY] = True
            yield document


class _TaskChecks:
    """What one task checks against, built once when the task starts: the problems, their n-gram index
    and AST node sequences, and (for deep-checked documents) the embedder and the problems' vectors."""

    def __init__(self, config: DecontaminateConfig):
        self.config = config
        self.items = load_benchmark_items(config.benchmarks, config.mbpp_path, config.problems)
        if not self.items:
            raise DecontaminationError("no benchmark problems to decontaminate against")
        self.ngram_owner: dict[tuple[str, ...], int] = {}
        for p, item in enumerate(self.items):
            for gram in word_ngrams(item.text, config.ngram):
                self.ngram_owner.setdefault(gram, p)
        self.vocabulary = {word for gram in self.ngram_owner for word in gram}
        self.problem_nodes = [ast_node_types(item.code) for item in self.items]
        self.judged = np.array([n is not None and len(n) >= config.min_ast_nodes for n in self.problem_nodes])
        self.embedder: Any = None
        self.problem_vectors: np.ndarray | None = None

    def ngram_hits(self, text: str) -> list[int]:
        """Problems sharing an n-gram with ``text`` (each n-gram counted for the first problem holding it)."""
        n, owner = self.config.ngram, self.ngram_owner
        hits: set[int] = set()
        # A benchmark n-gram lies inside a run of words that all occur in the benchmarks: only such runs
        # are cut into n-grams (most of a file's windows hold some word no problem uses).
        for in_benchmarks, run in itertools.groupby(WORD.findall(text.lower()), key=self.vocabulary.__contains__):
            words = list(run)
            if in_benchmarks and len(words) >= n:
                hits.update(owner[g] for g in zip(*(words[k:] for k in range(n))) if g in owner)
        return sorted(hits)

    def similarity(self, texts: list[str]) -> np.ndarray:
        """Cosine similarity [documents x problems]; for unit vectors ||a - b||^2 = 2 - 2 a.b."""
        if self.embedder is None:
            from data_tools.embed import load_embedder

            self.embedder = load_embedder(self.config.embedder, self.config.device)
            self.problem_vectors = self.embedder.encode([item.text for item in self.items])
        assert self.problem_vectors is not None
        return self.embedder.encode(texts) @ self.problem_vectors.T

    def ast_rate(self, p: int, units: list[list[str]] | None) -> float:
        return ast_match_rate(self.problem_nodes[p], units) if self.judged[p] else 0.0


class _AstRates:
    """A document's AST match rate with each problem, computed on first use (the document is parsed
    once, and only if some rate is asked for)."""

    def __init__(self, checks: _TaskChecks, text: str):
        self.checks = checks
        self.text = text
        self.units: list[list[str]] | None = None
        self.rates: dict[int, float] = {}

    def __getitem__(self, p: int) -> float:
        if p not in self.rates:
            if self.units is None and not self.rates:
                self.units = ast_units(self.text)
            self.rates[p] = self.checks.ast_rate(p, self.units)
        return self.rates[p]


def _l2(similarity: float) -> float:
    return round(float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity))), 4)


class DecontaminationFilter(BaseFilter):
    """Drops documents that overlap a benchmark problem: by 13-gram on every document, and by AST match
    with one of its ``top_k`` nearest problems (by embedding) on the documents of ``--deep-input``.

    When its documents are done, the task writes its removed items and its share of the report
    (per problem the ``top_k`` nearest documents it saw and its n-gram hits) under
    :func:`task_files_dir`, for the report stage to merge."""

    name = "decontaminate"

    def __init__(self, config: DecontaminateConfig):
        super().__init__(batch_size=EMBED_BATCH)
        self.config = config

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._checks = _TaskChecks(self.config)
        problems = len(self._checks.items)
        self._nearest: list[list[tuple[float, int, Document]]] = [[] for _ in range(problems)]
        self._floor = np.full(problems, -np.inf)  # per problem: the similarity a document must beat to be noted
        self._hits: list[list[dict[str, Any]]] = [[] for _ in range(problems)]
        self._removed: list[dict[str, Any]] = []
        self._seen = self._deep = 0
        yield from super().run(data, rank, world_size)
        self._write_task_files(rank)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        checks, config = self._checks, self.config
        results: list[bool | tuple[bool, str]] = []
        deep_rows = []
        for i, doc in enumerate(batch):
            hits = checks.ngram_hits(doc.text)
            results.append(self._remove(doc, checks.items[hits[0]], config.ngram_reason) if hits else True)
            if doc.metadata.pop(DEEP_KEY, False):
                deep_rows.append((i, hits))
            else:
                for p in hits:  # deep documents' hits are noted with their scores below
                    self._hits[p].append(
                        {"id": doc.id, "similarity": None, "ast_match_rate": None, "ngram_overlap": True}
                    )
            self._seen += 1
        if not deep_rows:
            return results
        similarity = checks.similarity([batch[i].text for i, _ in deep_rows])
        judged = np.flatnonzero(checks.judged)
        for row, (i, hits) in enumerate(deep_rows):
            rates = _AstRates(checks, batch[i].text)
            if results[i] is True and len(judged):
                nearest = judged[np.argsort(-similarity[row, judged], kind="stable")[: config.top_k]].tolist()
                best = max(nearest, key=lambda p: (rates[p], -p))
                if rates[best] >= config.ast_threshold:
                    results[i] = self._remove(batch[i], checks.items[best], AST_MATCH, rates[best])
            self._note_nearest(batch[i], similarity[row], rates, hits)
            self._deep += 1
        return results

    def _remove(self, doc: Document, item: BenchmarkItem, reason: str, rate: float | None = None) -> tuple[bool, str]:
        removed = {"id": doc.id, "reason": reason, "benchmark": item.benchmark, "task_id": item.task_id}
        if rate is not None:
            removed["ast_match_rate"] = round(rate, 4)
        self._removed.append(removed)
        self.stat_update(f"removed_{item.benchmark}_{reason.replace(' ', '_')}")
        return False, reason

    def _note_nearest(self, doc: Document, similarity: np.ndarray, rates: _AstRates, hits: list[int]) -> None:
        """Keep, per problem, the ``top_k`` most similar documents this task has seen (a min-heap of
        ``(similarity, -order, document)``; their AST match rates are computed once the task's documents
        are done, for those still there), and every n-gram hit with its scores: the report's closest items."""
        k = self.config.top_k
        for p in hits:
            self._hits[p].append(
                {
                    "id": doc.id,
                    "similarity": float(similarity[p]),
                    "ast_match_rate": round(rates[p], 4),
                    "ngram_overlap": True,
                }
            )
        for p in np.flatnonzero(similarity > self._floor).tolist():
            if p in hits:
                continue
            heap = self._nearest[p]
            # -self._deep: among equal similarities the document seen first stays
            entry = (float(similarity[p]), -self._deep, doc)
            if len(heap) < k:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)
            if len(heap) == k:
                self._floor[p] = heap[0][0]

    def _closest(self) -> list[list[dict[str, Any]]]:
        """Per problem: its nearest documents, most similar first, then its n-gram hits."""
        rates: dict[int, _AstRates] = {}  # by -order: each document parsed once
        closest = []
        for p, (heap, hits) in enumerate(zip(self._nearest, self._hits, strict=True)):
            nearest = []
            for s, order, doc in sorted(heap, key=lambda e: (e[0], e[1]), reverse=True):
                rate = rates.setdefault(order, _AstRates(self._checks, doc.text))[p]
                nearest.append(
                    {"id": doc.id, "similarity": s, "ast_match_rate": round(rate, 4), "ngram_overlap": False}
                )
            closest.append(nearest + hits)
        return closest

    def _write_task_files(self, rank: int) -> None:
        out = task_files_dir(self.config.output_prefix)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / f"removed-{rank:05d}.jsonl") as f:
            f.writelines(json.dumps(r) + "\n" for r in self._removed)
        removed: dict[str, dict[str, int]] = {}
        for r in self._removed:
            counts = removed.setdefault(r["benchmark"], {})
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        share = {
            "rank": rank,
            "documents": self._seen,
            "deep_documents": self._deep,
            "kept": self._seen - len(self._removed),
            "removed": removed,
            "embedder": getattr(self._checks.embedder, "name", None),
            "device": getattr(self._checks.embedder, "device", None),
            "problems": self._closest(),
        }
        # Written last: the report stage reads a task's share only once both files are complete.
        atomic_write_text(out / f"report-{rank:05d}.json", json.dumps(share) + "\n")


class DecontaminationReport(PipelineStep):
    """Merges the tasks' removed items into ``PREFIX.removed.jsonl`` and their shares of the report
    into ``PREFIX.decontamination.json`` / ``.md`` (runs as one task after the filter's tasks)."""

    name = "decontamination report"
    type = "📊 - STATS"

    def __init__(self, config: DecontaminateConfig, tasks: int):
        super().__init__()
        self.config = config
        self.tasks = tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        write_report(self.config, self.tasks)


def write_report(config: DecontaminateConfig, tasks: int) -> dict[str, Any]:
    directory = task_files_dir(config.output_prefix)
    missing = [r for r in range(tasks) if not (directory / f"report-{r:05d}.json").is_file()]
    if missing:
        raise DecontaminationError(
            f"{directory}: no report from tasks {missing[:10]} of {tasks}: rerun the same command to finish them"
        )
    shares = [json.loads((directory / f"report-{r:05d}.json").read_text()) for r in range(tasks)]
    prefix = config.output_prefix
    with atomic_open(f"{prefix}.removed.jsonl") as f:
        for r in range(tasks):
            f.writelines(json.dumps(rec) + "\n" for rec in iter_jsonl(directory / f"removed-{r:05d}.jsonl"))

    removed: dict[str, dict[str, int]] = {b: {config.ngram_reason: 0, AST_MATCH: 0} for b in config.benchmarks}
    for share in shares:
        for benchmark, counts in share["removed"].items():
            for reason, n in counts.items():
                removed[benchmark][reason] += n
    items = load_benchmark_items(config.benchmarks, config.mbpp_path, config.problems)
    problems_report = []
    for p, item in enumerate(items):
        entries = [entry for share in shares for entry in share["problems"][p]]
        nearest = sorted(
            (e for e in entries if e["similarity"] is not None and not e["ngram_overlap"]),
            key=lambda e: -e["similarity"],
        )[: config.top_k]
        closest = [
            {
                "id": e["id"],
                "l2_distance": None if e["similarity"] is None else _l2(e["similarity"]),
                "ast_match_rate": e["ast_match_rate"],
                "ngram_overlap": e["ngram_overlap"],
            }
            for e in nearest + [e for e in entries if e["ngram_overlap"]]
        ]
        closest.sort(key=lambda c: (c["l2_distance"] is None, c["l2_distance"] or 0.0))
        best = max((c["ast_match_rate"] or 0.0 for c in closest), default=0.0)
        nodes = ast_node_types(item.code)
        problems_report.append(
            {
                "benchmark": item.benchmark,
                "task_id": item.task_id,
                "parses": nodes is not None,
                "judged_by_ast": nodes is not None and len(nodes) >= config.min_ast_nodes,
                "max_ast_match_rate": best,
                "ngram_overlaps": sum(c["ngram_overlap"] for c in closest),
                "similar_at": {str(tau): best >= tau for tau in config.report_taus},
                "closest": closest,
            }
        )
    per_task = [{k: v for k, v in share.items() if k not in ("problems", "embedder")} for share in shares]
    report = {
        "params": asdict(config),
        "embedder": next((s["embedder"] for s in shares if s["embedder"]), None),
        "documents": sum(s["documents"] for s in shares),
        "deep_documents": sum(s["deep_documents"] for s in shares),
        "kept": sum(s["kept"] for s in shares),
        "removed_ngram": sum(c[config.ngram_reason] for c in removed.values()),
        "removed_ast": sum(c[AST_MATCH] for c in removed.values()),
        "removed": removed,
        "similar_problems": {
            str(tau): sum(r["similar_at"][str(tau)] for r in problems_report) for tau in config.report_taus
        },
        "shards": [str(p) for r in range(tasks) for p in sorted(Path(prefix).parent.glob(_shard_glob(prefix, r)))],
        "tasks": per_task,
        "problems": problems_report,
    }
    atomic_write_text(f"{prefix}.decontamination.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(f"{prefix}.decontamination.md", report_tables(report, config.ngram_reason))
    return report


def _shard_glob(prefix: str, rank: int) -> str:
    return f"{Path(prefix).name}-{rank:05d}-[0-9][0-9][0-9][0-9][0-9].jsonl"


def report_tables(report: dict[str, Any], ngram_reason: str) -> str:
    """The report's counts as Markdown: removed per benchmark and check, then per task."""
    lines = [
        summary(report),
        "",
        f"| benchmark | removed: {ngram_reason} | removed: {AST_MATCH} |",
        "|---|---:|---:|",
        *(
            f"| {benchmark} | {counts[ngram_reason]} | {counts[AST_MATCH]} |"
            for benchmark, counts in report["removed"].items()
        ),
        "",
        f"| task | documents | deep-checked | kept | removed: {ngram_reason} | removed: {AST_MATCH} |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for task in report["tasks"]:
        by_reason = {
            reason: sum(counts.get(reason, 0) for counts in task["removed"].values())
            for reason in (ngram_reason, AST_MATCH)
        }
        lines.append(
            f"| {task['rank']} | {task['documents']} | {task['deep_documents']} | {task['kept']} | "
            f"{by_reason[ngram_reason]} | {by_reason[AST_MATCH]} |"
        )
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> str:
    similar = ", ".join(f"tau {t}: {n}" for t, n in report["similar_problems"].items())
    return (
        f"read {report['documents']} items ({report['deep_documents']} also checked by embedding and AST): "
        f"kept {report['kept']}, removed {report['removed_ngram']} for 13-gram overlap and "
        f"{report['removed_ast']} for AST similarity; problems with a similar training item: {similar}"
    )


def stages(config: DecontaminateConfig, options: ExecutorOptions) -> list[Stage]:
    """The filter stage (``options.tasks`` tasks) and the one-task report stage."""
    config.validate()
    readers: list[PipelineStep] = []
    if config.input:
        readers.append(RecordReader(config.input, text_key=config.text_key, on_error=config.on_error))
    if config.deep_input:
        readers.append(DeepInputReader(config.deep_input, text_key=config.text_key, on_error=config.on_error))
    settings = asdict(config)  # a rerun with other inputs or options must not take the earlier tasks as done
    return [
        Stage(
            "decontaminate",
            [
                *readers,
                DecontaminationFilter(config),
                RecordWriter(config.output_prefix, text_key=config.text_key),
            ],
            logging_dir_for(config.output_prefix, "decontaminate"),
            settings=settings,
        ),
        Stage(
            "decontaminate-report",
            [DecontaminationReport(config, options.tasks)],
            logging_dir_for(config.output_prefix, "decontaminate-report"),
            tasks=1,
            settings=settings,
        ),
    ]


def run(config: DecontaminateConfig, options: ExecutorOptions) -> dict[str, Any] | None:
    """Run the stages; locally, return the report (on a cluster they are only submitted)."""
    run_stages(stages(config, options), options)
    if options.executor == "slurm":
        return None
    return json.loads(Path(f"{config.output_prefix}.decontamination.json").read_text())


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.decontaminate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = DecontaminateConfig()
    parser.add_argument(
        "--input", nargs="+", default=[], help="JSONL/parquet files, globs or directories: 13-gram check only"
    )
    parser.add_argument(
        "--deep-input",
        nargs="+",
        default=[],
        help="inputs also checked by embedding distance and AST match (the paper's exercises); default: none",
    )
    parser.add_argument("--output-prefix", required=True, help="kept shards go to PREFIX-RRRRR-NNNNN.jsonl")
    parser.add_argument("--benchmarks", nargs="+", default=defaults.benchmarks, choices=BENCHMARKS)
    parser.add_argument("--mbpp-path", help="MBPP's mbpp.jsonl (without it MBPP comes from the Hugging Face hub)")
    parser.add_argument(
        "--problems", nargs="+", default=[], help="only these task ids, e.g. HumanEval/0 Mbpp/11 (default: all)"
    )
    parser.add_argument("--text-key", default=defaults.text_key)
    parser.add_argument("--ngram", type=int, default=defaults.ngram, help="words per n-gram for the overlap test")
    parser.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        help="nearest problems by embedding an item is AST-compared with, and items listed per problem (default: 10)",
    )
    parser.add_argument(
        "--ast-threshold", type=float, default=defaults.ast_threshold, help="AST match rate at which an item is removed"
    )
    parser.add_argument(
        "--min-ast-nodes",
        type=int,
        default=defaults.min_ast_nodes,
        help="problems with a smaller AST are judged by n-gram overlap alone",
    )
    parser.add_argument("--report-taus", type=float, nargs="+", default=defaults.report_taus)
    parser.add_argument("--embedder", default=defaults.embedder, help="'minilm' or a megaphi/HF model directory")
    add_device_argument(parser)
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default=defaults.on_error)
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    options = executor_options_from_args(args)
    config = DecontaminateConfig(**{name: getattr(args, name) for name in DecontaminateConfig.__dataclass_fields__})
    config.validate()
    if "mbpp" in config.benchmarks and config.mbpp_path is None:
        print("note: no --mbpp-path: loading MBPP from the Hugging Face hub", file=sys.stderr)
    report = run(config, options)
    if report is None:
        print(f"submitted decontamination of {config.output_prefix} to Slurm")
    else:
        print(report_tables(report, config.ngram_reason), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
