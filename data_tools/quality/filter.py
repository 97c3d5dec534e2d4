"""Score every document of a corpus with a trained classifier and keep the educational ones, on datatrove.

Two stages (see :func:`stages`):

- ``quality-filter``, ``--tasks`` tasks: each task reads its share of the corpus files
  (:class:`~data_tools.steps.RecordReader`), embeds its documents ``--batch-size`` at a time (a batch
  spans files; fp16 on the task's GPU where it has one, else its CPUs), keeps those whose positive-class
  probability is at least the threshold and writes them, unchanged plus ``"quality_score"``, to
  ``{output_prefix}-{rank:05d}-NNNNN.jsonl``. Removed documents are counted per reason and, with
  ``--removed-prefix``, written with their score and ``filter_reason`` to
  ``{removed_prefix}-{rank:05d}-NNNNN.jsonl``. Each task leaves its counts and score histogram in the
  stage's logging directory (``scores/{rank:05d}.json``), written before its completion marker.
- ``quality-report``, one task (:mod:`data_tools.quality.report`): sums them into ``{output_prefix}.quality.json`` (documents, kept,
  removed per reason, kept fraction, threshold, score histogram, one row per task) and
  ``{output_prefix}.quality.png`` (the histogram).

The classifier is trained once, before (``python -m data_tools.quality train``); every task loads it.
Kept documents depend only on the corpus, the classifier and the threshold: not on the task count,
the batch size or the executor.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter

from data_tools.embed import DEVICES
from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, run_stages
from data_tools.jsonl import ON_ERROR_CHOICES, JsonlShardWriter, OnError
from data_tools.quality.classifier import Classifier, load_classifier
from data_tools.quality.documents import QualityError, corpus_files
from data_tools.quality.report import HISTOGRAM_BINS, FilterReport, QualityReport, report_paths, scores_path
from data_tools.steps import RecordReader, RecordWriter, record_from_document
from megaphi.common.files import atomic_write_text
from megaphi.progress import progress

BELOW_THRESHOLD = "score_below_threshold"  # the reason a removed document carries
FILTER_STAGE, REPORT_STAGE = "quality-filter", "quality-report"


@dataclass
class QualityFilterConfig:
    """``python -m data_tools.quality filter``'s options (flag ``--foo-bar`` is field ``foo_bar``)."""

    input: list[str] = field(default_factory=list)  # corpus shards: paths, globs or directories
    classifier: str = ""  # directory written by `train`
    output_prefix: str = ""  # kept shards PREFIX-RRRRR-NNNNN.jsonl, report PREFIX.quality.json and .png
    threshold: float | None = None  # None: the one saved with the classifier
    batch_size: int = 64  # documents embedded per batch
    device: str = "auto"  # embedding device: auto, cpu or cuda (data_tools.embed.resolve_device)
    removed_prefix: str = ""  # also write removed records (score and reason) to PREFIX-RRRRR-NNNNN.jsonl
    text_key: str = "text"
    on_error: OnError = "stop"

    def check(self) -> None:
        if not self.input:
            raise QualityError("no corpus given: pass --input with the JSONL shards written by data_tools.corpus")
        if not self.classifier:
            raise QualityError("no classifier given: pass --classifier with the directory written by `train`")
        if not self.output_prefix:
            raise QualityError("no output prefix given: pass --output-prefix")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise QualityError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.batch_size < 1:
            raise QualityError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise QualityError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.on_error not in ON_ERROR_CHOICES:
            raise QualityError(f"--on-error {self.on_error!r}: choose one of {', '.join(ON_ERROR_CHOICES)}")


class RemovedRecords:
    """The filter's exclusion writer: removed documents as records in ``{prefix}-{rank:05d}-NNNNN.jsonl``,
    which appear only when the task finishes (a killed task leaves none behind)."""

    def __init__(self, prefix: str, text_key: str = "text"):
        self.prefix = prefix
        self.text_key = text_key
        self._writer: JsonlShardWriter | None = None

    def open(self, rank: int) -> None:
        """Start task ``rank``'s shards. Shards of this rank already there come from a run of the task
        that died before its completion marker: they are this task's own and are replaced."""
        task_prefix = Path(f"{self.prefix}-{rank:05d}")
        for stale in task_prefix.parent.glob(f"{task_prefix.name}-[0-9][0-9][0-9][0-9][0-9].jsonl"):
            stale.unlink()
        self._writer = JsonlShardWriter(task_prefix)

    def __enter__(self) -> RemovedRecords:
        return self

    def write(self, document: Document, rank: int = 0) -> None:
        assert self._writer is not None, "RemovedRecords.open(rank) first"
        self._writer.write(record_from_document(document, self.text_key))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort() if exc_type is not None else writer.close()


# The classifier of this process, loaded by its first task: tasks that run one after another in one
# process (--workers 1) share it instead of loading the embedder again.
_loaded: dict[str, Any] = {}


def _load_classifier_for_task(classifier_dir: str, device: str) -> Classifier:
    key = (os.path.abspath(classifier_dir), device)
    if _loaded.get("key") != key:
        classifier = load_classifier(classifier_dir)
        classifier.load_embedder(device)
        _loaded.update(key=key, classifier=classifier)
    return _loaded["classifier"]


class QualityFilter(BaseFilter):
    """Keeps the documents the classifier scores at or above the threshold; every document leaves with
    its ``quality_score`` in its metadata, removed ones with the reason ``score_below_threshold``."""

    name = "quality filter"

    def __init__(
        self,
        classifier_dir: str,
        scores_dir: str,
        *,
        threshold: float | None = None,
        batch_size: int = 64,
        device: str = "auto",
        torch_threads: int = 0,
        exclusion_writer: RemovedRecords | None = None,
    ):
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.classifier_dir = classifier_dir
        self.scores_dir = scores_dir
        self.threshold = threshold
        self.device = device
        # 0: torch's default (the CPUs this task may use). Private: how the task runs, not what it
        # keeps, so it is no part of the settings a rerun must share with the run it continues.
        self._torch_threads = torch_threads

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        scores = self._classifier.score([doc.text for doc in batch])
        self._histogram += np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
        results: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores, strict=True):
            doc.metadata["quality_score"] = round(float(score), 6)
            if score >= self._threshold:
                self._kept += 1
                results.append(True)
            else:
                self._removed[BELOW_THRESHOLD] += 1
                results.append((False, BELOW_THRESHOLD))
        self._bar.update(len(batch))
        return results

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)
        self._classifier = _load_classifier_for_task(self.classifier_dir, self.device)
        self._threshold = self._classifier.threshold if self.threshold is None else self.threshold
        self._histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        self._kept, self._removed = 0, Counter[str]()
        if self.exclusion_writer is not None:
            self.exclusion_writer.open(rank)
        start = time.monotonic()
        with progress(desc=f"quality filter task {rank}", unit="docs") as self._bar:
            yield from super().run(data, rank, world_size)
        elapsed = time.monotonic() - start
        documents = self._kept + sum(self._removed.values())
        task = {
            "rank": rank,
            "documents": documents,
            "kept": self._kept,
            "removed": documents - self._kept,
            "removed_by_reason": dict(sorted(self._removed.items())),
            "threshold": self._threshold,
            "device": self._classifier.embedder.device,
            "batch_size": self.batch_size,
            "elapsed_s": round(elapsed, 3),
            "documents_per_s": round(documents / elapsed, 2) if elapsed > 0 else None,
            "histogram": self._histogram.tolist(),
        }
        path = scores_path(self.scores_dir, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(task) + "\n")


def _torch_threads(options: ExecutorOptions) -> int:
    """Threads per filter task: locally the machine's CPUs shared by the tasks running at once (so they
    do not oversubscribe the cores); 0 (torch's default) on a cluster, where that is the CPUs the task
    was given, and wherever OMP_NUM_THREADS says how many."""
    if options.executor != "local" or os.environ.get("OMP_NUM_THREADS"):
        return 0
    cpus = os.cpu_count() or 1
    at_once = min(options.tasks, options.workers if options.workers != -1 else cpus)
    return max(1, cpus // at_once)


# What a rerun into the same output prefix must share with the run it continues (the stages'
# settings, see data_tools.executors.Stage): everything that decides which documents are kept and where
# they go. Batch size and device do not, so a rerun may change them (e.g. a smaller batch after a GPU
# ran out of memory).
RESULT_SETTINGS = ("input", "classifier", "threshold", "removed_prefix", "text_key", "on_error")


def stages(config: QualityFilterConfig, options: ExecutorOptions) -> list[Stage]:
    """The filter (``options.tasks`` tasks) and its report (one task)."""
    config.check()
    settings = {name: getattr(config, name) for name in RESULT_SETTINGS}
    filter_dir = logging_dir_for(config.output_prefix, FILTER_STAGE)
    removed = RemovedRecords(config.removed_prefix, config.text_key) if config.removed_prefix else None
    return [
        Stage(
            FILTER_STAGE,
            [
                RecordReader(config.input, text_key=config.text_key, on_error=config.on_error),
                QualityFilter(
                    config.classifier,
                    os.path.join(filter_dir, "scores"),
                    threshold=config.threshold,
                    batch_size=config.batch_size,
                    device=config.device,
                    torch_threads=_torch_threads(options),
                    exclusion_writer=removed,
                ),
                RecordWriter(config.output_prefix, text_key=config.text_key),
            ],
            filter_dir,
            settings=settings,
        ),
        Stage(
            REPORT_STAGE,
            [QualityReport(config, filter_dir, options.tasks)],
            logging_dir_for(config.output_prefix, REPORT_STAGE),
            tasks=1,
            settings=settings,
        ),
    ]


def filter_corpus(config: QualityFilterConfig, options: ExecutorOptions | None = None) -> FilterReport | None:
    """Run the filter and its report; locally returns the report, on a cluster None once submitted.

    Inputs that exist before anything runs are checked here, so a local run with a wrong path or a
    missing classifier fails in a second with one line. Rerunning the same command after a crash or a
    killed task runs only the unfinished tasks; rerunning it with other settings is refused."""
    options = options or ExecutorOptions()
    config.check()
    corpus_files(config.input)
    if options.executor == "local":
        from data_tools.embed import resolve_device

        resolve_device(config.device)  # a --device cuda without a GPU fails before any task starts
    load_classifier(config.classifier)
    run_stages(stages(config, options), options)
    if options.executor != "local":
        return None
    report_path, plot_path = report_paths(config.output_prefix)
    payload = json.loads(report_path.read_text())
    return FilterReport(
        payload["documents"],
        payload["kept"],
        payload["threshold"],
        payload["histogram"]["counts"],
        payload["outputs"],
        report_path,
        plot_path,
    )
