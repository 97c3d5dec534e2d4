"""The quality filter's report: the filter tasks' counts and score histograms summed into
``{output_prefix}.quality.json`` and ``.png`` by one task (see :mod:`data_tools.quality.filter`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from data_tools.jsonl import expand_inputs
from data_tools.quality.classifier import load_classifier
from data_tools.quality.documents import QualityError
from data_tools.steps import ReportStep, task_files
from megaphi.common.files import atomic_open, atomic_write_text

if TYPE_CHECKING:
    from data_tools.quality.filter import QualityFilterConfig

HISTOGRAM_BINS = 50  # over [0, 1], the range of the forest's probabilities


def scores_path(scores_dir: str | os.PathLike, rank: int) -> Path:
    """Where task ``rank`` of the filter stage leaves its counts and score histogram."""
    return Path(scores_dir) / f"{rank:05d}.json"


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


def report_paths(output_prefix: str | os.PathLike) -> tuple[Path, Path]:
    """The report's JSON and PNG next to the kept shards."""
    return Path(f"{os.fspath(output_prefix)}.quality.json"), Path(f"{os.fspath(output_prefix)}.quality.png")


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
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _skipped_lines(stats_path: Path) -> int:
    """Malformed lines the task's reader skipped (``--on-error skip``), from datatrove's task stats."""
    if not stats_path.is_file():
        return 0
    total = 0
    for step in json.loads(stats_path.read_text()):
        value = step.get("stats", {}).get("skipped_lines", 0)
        total += value.get("total", 0) if isinstance(value, dict) else int(value)
    return total


class QualityReport(ReportStep):
    """Sums the filter tasks' counts and histograms into the report JSON and PNG (one task)."""

    name = "quality report"
    type = "📊 - REPORT"

    def __init__(self, config: QualityFilterConfig, filter_logging_dir: str, tasks: int):
        super().__init__(config, tasks)
        self.filter_logging_dir = filter_logging_dir

    def write(self) -> None:
        write_report(self.config, self.filter_logging_dir, self.tasks)


def write_report(config: QualityFilterConfig, filter_logging_dir: str, tasks: int) -> FilterReport:
    scores_dir = Path(filter_logging_dir) / "scores"
    missing = [rank for rank in range(tasks) if not scores_path(scores_dir, rank).is_file()]
    if missing:
        raise QualityError(
            f"filter tasks {missing[:10]} of {tasks} left no scores in {scores_dir}: rerun the filter to finish them"
        )
    rows = [json.loads(scores_path(scores_dir, rank).read_text()) for rank in range(tasks)]
    files = expand_inputs(config.input)
    prefix = config.output_prefix
    for row in rows:
        rank = row["rank"]
        row["inputs"] = task_files(files, rank, tasks)
        row["outputs"] = sorted(str(p) for p in Path(prefix).parent.glob(f"{Path(prefix).name}-{rank:05d}-*.jsonl"))
        row["skipped_lines"] = _skipped_lines(Path(filter_logging_dir) / "stats" / f"{rank:05d}.json")
    histogram = np.sum([row.pop("histogram") for row in rows], axis=0).astype(int).tolist()
    documents, kept = sum(row["documents"] for row in rows), sum(row["kept"] for row in rows)
    removed_by_reason: Counter[str] = Counter()
    for row in rows:
        removed_by_reason.update(row["removed_by_reason"])
    threshold = rows[0]["threshold"]
    classifier = load_classifier(config.classifier)
    report_path, plot_path = report_paths(prefix)
    report = FilterReport(
        documents, kept, threshold, histogram, [o for row in rows for o in row["outputs"]], report_path, plot_path
    )
    task_seconds = sum(row["elapsed_s"] for row in rows)
    payload: dict[str, Any] = {
        "documents": documents,
        "kept": kept,
        "removed": documents - kept,
        "removed_by_reason": dict(sorted(removed_by_reason.items())),
        "kept_fraction": report.kept_fraction,
        "threshold": threshold,
        "embedder": classifier.metadata["embedder"],
        "classifier_metrics": classifier.metadata["metrics"],
        "histogram": {"bin_edges": np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1).round(4).tolist(), "counts": histogram},
        "outputs": report.outputs,
        "removed_outputs": sorted(
            str(p) for p in Path(config.removed_prefix).parent.glob(f"{Path(config.removed_prefix).name}-*.jsonl")
        )
        if config.removed_prefix
        else [],
        "tasks": rows,
        "task_seconds": round(task_seconds, 3),
        "documents_per_task_second": round(documents / task_seconds, 2) if task_seconds > 0 else None,
    }
    atomic_write_text(report_path, json.dumps(payload, indent=2) + "\n")
    plot_histogram(histogram, threshold, plot_path, f"{kept} of {documents} kept ({100 * report.kept_fraction:.1f}%)")
    return report
