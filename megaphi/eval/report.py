"""Per-problem evaluation reports: ``report.json`` for tools, ``report.md`` for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from megaphi.common.files import atomic_write_text
from megaphi.eval.passk import estimate_pass_at_k

_EXCERPT = 160


def per_problem(results: Sequence[dict]) -> list[dict]:
    """One row per task in first-seen order: samples, correct, pass@1 and the first failure."""
    rows: dict[str, dict] = {}
    for result in results:
        row = rows.setdefault(
            result["task_id"], {"task_id": result["task_id"], "samples": 0, "correct": 0, "first_failure": None}
        )
        row["samples"] += 1
        row["correct"] += int(result["passed"])
        if not result["passed"] and row["first_failure"] is None:
            row["first_failure"] = result["result"]
    for row in rows.values():
        row["pass@1"] = estimate_pass_at_k(row["samples"], row["correct"], 1)
    return list(rows.values())


def _cell(text: str | None) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    text = text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"
    return text.replace("|", "\\|")


def render_markdown(summary: dict, problems: Sequence[dict], metadata: dict | None = None) -> str:
    lines = [f"# {summary['benchmark']} evaluation", ""]
    for key, value in (metadata or {}).items():
        lines.append(f"- {key}: {value}")
    lines.append(
        f"- problems scored: {summary['problems_scored']} of {summary['problems_in_benchmark']}, "
        f"samples: {summary['samples']}"
    )
    for key, value in summary.items():
        if key.startswith("pass@"):
            lines.append(f"- **{key}: {100 * value:.2f}%**")
    lines.append("- outcomes: " + ", ".join(f"{name} {count}" for name, count in summary["outcomes"].items()))
    lines += ["", "| task | samples | correct | pass@1 | first failure |", "|---|---:|---:|---:|---|"]
    for row in problems:
        lines.append(
            f"| {row['task_id']} | {row['samples']} | {row['correct']} | {row['pass@1']:.3f} "
            f"| {_cell(row['first_failure'])} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path, summary: dict, results: Sequence[dict], metadata: dict | None = None
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = per_problem(results)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    atomic_write_text(
        json_path, json.dumps({"summary": summary, "metadata": metadata or {}, "problems": problems}, indent=1) + "\n"
    )
    atomic_write_text(md_path, render_markdown(summary, problems, metadata))
    return json_path, md_path
