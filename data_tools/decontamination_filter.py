"""The decontamination filter step (see :mod:`data_tools.decontaminate` for the checks and the command):
each task drops the documents that overlap a benchmark problem and leaves, under
:func:`task_files_dir`, its removed items and its share of the report.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter

from data_tools.contamination import (
    WORD,
    BenchmarkItem,
    DecontaminationError,
    ast_match_rate,
    ast_node_types,
    ast_units,
    load_benchmark_items,
    word_ngrams,
)
from data_tools.steps import RecordReader
from megaphi.common.files import atomic_open, atomic_write_text

if TYPE_CHECKING:
    from data_tools.decontaminate import DecontaminateConfig

AST_MATCH = "ast match"  # the reason of a removal by AST match
DEEP_KEY = "_decontaminate_deep"  # marks a --deep-input document between the reader and the filter
EMBED_BATCH = 256  # documents embedded together (one matrix product against the problems per batch)


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
