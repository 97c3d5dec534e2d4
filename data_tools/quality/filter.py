"""Score every document of a corpus with a trained classifier and keep the educational ones.

Corpus files are scored in parallel, one file per task, by a pool of worker processes that each
load the classifier and its embedder once. Input file ``i`` writes its kept records (unchanged,
plus ``"quality_score"``) to ``{output_prefix}-{i:05d}.jsonl``, so outputs are reproducible
whatever the number of workers. The report goes to ``{output_prefix}.quality.json`` (counts, kept
fraction, threshold, score histogram) and ``{output_prefix}.quality.png`` (the histogram).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_tools.jsonl import ReadStats
from data_tools.quality.classifier import Classifier, load_classifier
from data_tools.quality.documents import QualityError, corpus_files, iter_documents
from megaphi.common.files import atomic_open, atomic_write_text
from megaphi.progress import progress

HISTOGRAM_BINS = 50  # over [0, 1], the range of the forest's probabilities


@dataclass(frozen=True)
class FilterTask:
    index: int
    input_path: str
    output_path: str
    threshold: float
    text_key: str
    on_error: str
    batch_size: int


@dataclass
class FileResult:
    input_path: str
    output_path: str
    documents: int
    kept: int
    skipped_lines: int
    histogram: list[int]


# One classifier per worker process, loaded by the pool initializer (or lazily in-process).
_worker_classifier: Classifier | None = None


def _init_worker(classifier_dir: str, torch_threads: int) -> None:
    global _worker_classifier
    import torch

    torch.set_num_threads(torch_threads)
    _worker_classifier = load_classifier(classifier_dir)
    _worker_classifier.load_embedder()


def filter_file(task: FilterTask, classifier: Classifier | None = None, bar: Any = None) -> FileResult:
    """Score one corpus file and write its kept records; returns its counts and score histogram.
    ``bar`` (a megaphi.progress display) counts the documents as they are scored."""
    classifier = classifier or _worker_classifier
    histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    read = ReadStats()
    documents = kept = 0
    with atomic_open(task.output_path) as out:  # a failed file leaves no partial output
        batch: list = []

        def flush() -> None:
            nonlocal documents, kept
            scores = classifier.score([document.text for document in batch])
            histogram[:] += np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
            for document, score in zip(batch, scores):
                if score >= task.threshold:
                    out.write(
                        json.dumps({**document.record, "quality_score": round(float(score), 6)}, ensure_ascii=False)
                        + "\n"
                    )
                    kept += 1
            documents += len(batch)
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

        for document in iter_documents(
            [task.input_path], text_key=task.text_key, on_error=task.on_error, stats=read, unique_ids=False
        ):
            batch.append(document)
            if len(batch) == task.batch_size:
                flush()
        if batch:
            flush()
    return FileResult(task.input_path, task.output_path, documents, kept, read.skipped, histogram.tolist())


def _filter_file_in_worker(task: FilterTask) -> FileResult:
    return filter_file(task)


@dataclass
class FilterReport:
    documents: int
    kept: int
    threshold: float
    histogram: list[int]
    outputs: list[str]
    report_path: Path
    plot_path: Path

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.documents if self.documents else 0.0

    def summary(self) -> str:
        return (
            f"kept {self.kept} of {self.documents} documents ({100 * self.kept_fraction:.1f}%) at threshold "
            f"{self.threshold:g}; report {self.report_path}, histogram {self.plot_path}"
        )


def plot_histogram(histogram: Sequence[int], threshold: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, 1.0, len(histogram) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(edges[:-1], histogram, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("quality score (probability of educational value)")
    ax.set_ylabel("documents")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def filter_corpus(
    corpus: Sequence[str | os.PathLike],
    classifier_dir: str | os.PathLike,
    output_prefix: str | os.PathLike,
    *,
    threshold: float | None = None,
    workers: int = 1,
    batch_size: int = 64,
    text_key: str = "text",
    on_error: str = "stop",
) -> FilterReport:
    """Score and filter the corpus; ``threshold=None`` uses the one saved with the classifier."""
    files = corpus_files(corpus)
    classifier = load_classifier(classifier_dir)
    threshold = classifier.threshold if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise QualityError(f"--threshold must be between 0 and 1, got {threshold}")
    if workers < 1 or batch_size < 1:
        raise QualityError(f"--workers and --batch-size must be at least 1, got {workers} and {batch_size}")
    prefix = os.fspath(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tasks = [
        FilterTask(i, path, f"{prefix}-{i:05d}.jsonl", threshold, text_key, on_error, batch_size)
        for i, path in enumerate(files)
    ]
    workers = min(workers, len(tasks))
    start = time.monotonic()
    bar = progress(desc="quality filter", unit="docs")
    if workers == 1:
        with bar:
            results = [filter_file(task, classifier, bar) for task in tasks]
    else:
        # spawn, not fork: torch's thread pools do not survive a fork of a process that used them.
        # An executor, not multiprocessing.Pool: a worker that cannot start breaks it instead of
        # being replaced forever.
        threads = max(1, (os.cpu_count() or 1) // workers)
        try:
            with (
                ProcessPoolExecutor(
                    workers,
                    mp_context=get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(os.fspath(classifier_dir), threads),
                ) as pool,
                bar,
            ):
                results = []
                for result in pool.map(_filter_file_in_worker, tasks):  # counted a file at a time
                    results.append(result)
                    bar.update(result.documents)
        except BrokenProcessPool:
            raise QualityError(
                "a filter worker process died (see its traceback above); "
                "rerun with --workers 1 to see the error in this process"
            ) from None
    elapsed = time.monotonic() - start
    return _write_report(results, classifier, threshold, prefix, elapsed, workers)


def _write_report(
    results: list[FileResult], classifier: Classifier, threshold: float, prefix: str, elapsed: float, workers: int
) -> FilterReport:
    histogram = np.sum([r.histogram for r in results], axis=0).astype(int).tolist()
    documents, kept = sum(r.documents for r in results), sum(r.kept for r in results)
    report = FilterReport(
        documents,
        kept,
        threshold,
        histogram,
        [r.output_path for r in results],
        Path(f"{prefix}.quality.json"),
        Path(f"{prefix}.quality.png"),
    )
    payload: dict[str, Any] = {
        "documents": documents,
        "kept": kept,
        "removed": documents - kept,
        "kept_fraction": report.kept_fraction,
        "threshold": threshold,
        "embedder": classifier.metadata["embedder"],
        "classifier_metrics": classifier.metadata["metrics"],
        "histogram": {"bin_edges": np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1).round(4).tolist(), "counts": histogram},
        "files": [
            {
                "input": r.input_path,
                "output": r.output_path,
                "documents": r.documents,
                "kept": r.kept,
                "skipped_lines": r.skipped_lines,
            }
            for r in results
        ],
        "workers": workers,
        "elapsed_s": round(elapsed, 3),
        "documents_per_s": round(documents / elapsed, 2) if elapsed > 0 else None,
    }
    atomic_write_text(report.report_path, json.dumps(payload, indent=2) + "\n")
    plot_histogram(
        histogram, threshold, report.plot_path, f"{kept} of {documents} kept ({100 * report.kept_fraction:.1f}%)"
    )
    return report
