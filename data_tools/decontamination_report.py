"""The decontamination report: the filter tasks' removed items and shares of the report merged into
``PREFIX.removed.jsonl`` and ``PREFIX.decontamination.json`` / ``.md`` (see :mod:`data_tools.decontaminate`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.contamination import DecontaminationError, ast_node_types, load_benchmark_items
from data_tools.decontamination_filter import AST_MATCH, task_files_dir
from data_tools.jsonl import iter_jsonl
from data_tools.steps import ReportStep
from megaphi.common.files import atomic_open, atomic_write_text

if TYPE_CHECKING:
    from data_tools.decontaminate import DecontaminateConfig


def _l2(similarity: float) -> float:
    return round(float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity))), 4)


class DecontaminationReport(ReportStep):
    """Merges the tasks' removed items into ``PREFIX.removed.jsonl`` and their shares of the report
    into ``PREFIX.decontamination.json`` / ``.md`` (runs as one task after the filter's tasks)."""

    name = "decontamination report"

    def write(self) -> None:
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
