"""Graded reports: per problem the test verdict, the judge's score and reason; the aggregate judge
score beside pass@1 and how often the two agree; and several models side by side (phi-1, Table 2)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Sequence

from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text
from megaphi.eval.graded.judge import MAX_SCORE

REPORT_JSON, REPORT_MD = "graded_report.json", "graded_report.md"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def sample_rows(
    results: Sequence[dict], ids: Sequence[str], judgments: dict[str, dict], failures: dict[str, dict]
) -> list[dict]:
    """One row per scored sample: test verdict, and the judge's score and reason, or why it is ungraded."""
    rows = []
    for result, sid in zip(results, ids, strict=True):
        judged = judgments.get(sid)
        row = {
            "sample_id": sid,
            "task_id": result["task_id"],
            "passed": result["passed"],
            "result": result["result"],
            "score": judged["score"] if judged else None,
            "reason": judged["reason"] if judged else None,
            "ungraded": None,
        }
        if judged is None:
            failure = failures.get(sid)
            row["ungraded"] = failure["reason"] if failure else "not judged (the judging run did not finish)"
        rows.append(row)
    return rows


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = mean(xs), mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def aggregate(rows: Sequence[dict], pass_score: int) -> dict:
    """Judge score (mean over graded samples, 0-10), agreement with the tests (the judge 'passes' a
    sample scored >= ``pass_score``) and the score-to-pass correlation; ungraded samples are counted
    apart and enter no mean."""
    graded = [r for r in rows if r["score"] is not None]
    passed_scores = [r["score"] for r in graded if r["passed"]]
    failed_scores = [r["score"] for r in graded if not r["passed"]]
    return {
        "samples": len(rows),
        "graded": len(graded),
        "ungraded": len(rows) - len(graded),
        "judge_score": mean(r["score"] for r in graded) if graded else None,
        "judge_score_max": MAX_SCORE,
        "judge_pass_score": pass_score,
        "agreement": mean(float((r["score"] >= pass_score) == r["passed"]) for r in graded) if graded else None,
        "score_pass_correlation": _pearson([r["score"] for r in graded], [float(r["passed"]) for r in graded]),
        "mean_score_when_tests_pass": mean(passed_scores) if passed_scores else None,
        "mean_score_when_tests_fail": mean(failed_scores) if failed_scores else None,
    }


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_markdown(report: dict) -> str:
    s, m = report["summary"], report["metadata"]
    lines = ["# graded evaluation", ""]
    lines += [f"- {key}: {value}" for key, value in m.items()]
    lines += [
        f"- samples: {s['samples']} over {s['problems_scored']} of {s['problems_in_benchmark']} problems; "
        f"graded by the judge: {s['graded']}, **ungraded: {s['ungraded']}**",
        f"- **judge score: {_number(s['judge_score'])} / {s['judge_score_max']}** (mean over graded samples)",
        f"- **pass@1 (hidden tests): {100 * s['pass@1']:.2f}%**",
        f"- agreement (judge score >= {s['judge_pass_score']} exactly when the tests pass): "
        f"{_number(None if s['agreement'] is None else 100 * s['agreement'])}%; score-pass correlation "
        f"{_number(s['score_pass_correlation'], 3)}; mean score when tests pass {_number(s['mean_score_when_tests_pass'])}, "
        f"when they fail {_number(s['mean_score_when_tests_fail'])}",
        "",
        "| sample | tests | judge score | judge's reason |",
        "|---|---|---:|---|",
    ]
    for row in report["samples"]:
        score = "ungraded" if row["score"] is None else str(row["score"])
        reason = row["reason"] if row["score"] is not None else row["ungraded"]
        lines.append(f"| {row['sample_id']} | {_cell(row['result'])} | {score} | {_cell(reason)} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict) -> tuple[Path, Path]:
    json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
    atomic_write_text(json_path, json.dumps(report, indent=1) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path


def read_report(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a graded --out-dir or its {REPORT_JSON}")
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or not {"summary", "metadata", "samples"} <= report.keys():
        raise UserError(f"{path} is not a graded report (written by `python -m megaphi.eval graded`)")
    return report


def render_comparison(reports: Sequence[dict], names: Sequence[str]) -> str:
    """Models side by side: the paper's Table 2 (judge score beside pass@1), then problem by problem."""
    judges = {(r["metadata"].get("judge model"), r["metadata"].get("judge prompt")) for r in reports}
    lines = ["# graded: models side by side", ""]
    if len(judges) > 1:
        lines += [
            "**warning: these reports come from different judges or prompt versions: "
            + "; ".join(f"{j} ({p})" for j, p in sorted(judges, key=str))
            + "**",
            "",
        ]
    else:
        ((judge, prompt),) = judges
        lines += [f"- judge: {judge}, prompt {prompt}", ""]
    lines += ["| model | judge score (0-10) | pass@1 | agreement | graded / samples |", "|---|---:|---:|---:|---:|"]
    for name, r in zip(names, reports):
        s = r["summary"]
        lines.append(
            f"| {_cell(name)} | {_number(s['judge_score'])} | {100 * s['pass@1']:.2f}% "
            f"| {_number(None if s['agreement'] is None else 100 * s['agreement'])}% | {s['graded']} / {s['samples']} |"
        )
    by_task: list[dict[str, list[dict]]] = [{} for _ in reports]
    for table, r in zip(by_task, reports):
        for row in r["samples"]:
            table.setdefault(row["task_id"], []).append(row)
    tasks = list(dict.fromkeys(t for table in by_task for t in table))
    lines += [
        "",
        "| problem | " + " | ".join(f"{_cell(n)} tests passed | {_cell(n)} judge score" for n in names) + " |",
        "|---|" + "---:|---:|" * len(names),
    ]
    for task in tasks:
        cells = []
        for table in by_task:
            rows = table.get(task, [])
            scores = [row["score"] for row in rows if row["score"] is not None]
            cells += [
                f"{sum(row['passed'] for row in rows)}/{len(rows)}" if rows else "-",
                _number(mean(scores), 1) if scores else ("ungraded" if rows else "-"),
            ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
