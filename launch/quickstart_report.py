"""The quickstart's report: what each stage's row counts (documents, tokens, losses, fields of the
stage's own report), and REPORT.md and report.json in the work directory, one row per stage (ran or
skipped and why, time, counts, what it said), the evaluation numbers, the images, where every output
lives, and what a toy model can and cannot show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launch.pipeline import Outcome, write_json_atomically
from megaphi.common.jsonl import read_jsonl

TOY_NOTE = """\
What a toy model can and cannot show: phi-tiny (2 layers, hidden size 128) trained for minutes on a
slice of the standard library cannot write a HumanEval solution; HumanEval pass@1 of 0 is the expected
result, and the completions show what the model learned (the shape of Python code, not its meaning).
It does learn the ten seed exercises it was finetuned on: the exercise evaluation asks for exactly
those, so passing them shows that finetuning, conversion, generation and the sandboxed scoring fit
together and that a trained model's answers are scored as passed, not that the model can program.
The synthetic textbooks and exercises come from the same toy model, so they are noise: the textbooks
are tokenized (the prefix the full recipe mixes into pretraining) but the toy does not pretrain again,
and few or no synthetic exercises pass validation. With a real endpoint (--base-url of a large
model) the same stages produce the phi-1 data."""


def read_json(path: Path) -> dict:
    """A report a stage wrote, or {} while it has not been written."""
    return json.loads(path.read_text()) if path.is_file() else {}


def report_fields(path: Path, *names: str) -> dict[str, Any]:
    """The named fields of a stage's JSON report (None while it has not been written)."""
    report = read_json(path)
    return {name: report.get(name) for name in names}


def jsonl_lines(*paths: Path) -> int:
    return sum(sum(1 for line in p.open(encoding="utf-8") if line.strip()) for p in paths if p.is_file())


def token_counts(prefix: Path) -> dict[str, int]:
    from megaphi.data.indexed import IndexedDataset

    if not Path(f"{prefix}.idx").is_file():
        return {}
    dataset = IndexedDataset(prefix)
    return {"documents": len(dataset), "tokens": int(sum(len(dataset[i]) for i in range(len(dataset))))}


def training_counts(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    steps = [r for r in read_jsonl(path) if "loss" in r and "step" in r]
    if not steps:
        return {}
    return {
        "steps": steps[-1]["step"],
        "first loss": round(steps[0]["loss"], 3),
        "last loss": round(steps[-1]["loss"], 3),
        "samples": steps[-1].get("consumed_samples"),
    }


def diversity_counts(path: Path) -> dict[str, Any]:
    """The synthetic data's diversity in the stage row: near-duplicate rate and embedding clusters."""
    report = read_json(path)
    if not report:
        return {}
    duplicates, embedding = report["near_duplicates"], report.get("embedding") or {}
    return {
        "synthetic records": report["records"],
        "near-duplicate rate": f"{duplicates['rate']:.1%}",
        "embedding clusters": embedding.get("clusters"),
    }


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_report(work: Path, outcomes: list[Outcome], total_s: float) -> Path:
    evals = {name: read_json(work / "eval" / name / "report.json") for name in ("humaneval", "exercises")}
    rows: list[dict[str, Any]] = [
        {
            "stage": o.stage.name,
            "title": o.stage.title,
            "status": o.status,
            "reason": o.reason,
            "seconds": round(o.seconds, 1),
            "inputs": o.inputs,
            "outputs": [str(p.relative_to(work)) for p in o.stage.outputs],
            "counts": o.counts,
            "said": [line for line in o.said if line],
        }
        for o in outcomes
    ]
    images = {
        "pretraining loss": "pretrain/loss_curve.png",
        "finetuning loss": "finetune/loss_curve.png",
        "quality scores": "data/filtered.quality.png",
        "synthetic data diversity (details: data/diversity/diversity.md)": "data/diversity/diversity.png",
    }
    payload: dict[str, Any] = {
        "work_dir": str(work),
        "seconds": round(total_s, 1),
        "stages": rows,
        "images": {k: v for k, v in images.items() if (work / v).is_file()},
        "evaluation": {name: report.get("summary") for name, report in evals.items()},
        "toy_model_note": TOY_NOTE,
    }
    write_json_atomically(work / "report.json", payload)

    ran = sum(o.status == "ran" for o in outcomes)
    lines = [
        "# Quickstart report",
        "",
        f"Work directory `{work}`; this run took {total_s:.0f}s: {ran} stage(s) ran, "
        f"{len(outcomes) - ran} skipped (outputs complete, inputs and parameters unchanged). "
        "The same content as JSON: `report.json`.",
        "",
        "| # | stage | this run | time (s) | counts | the stage said |",
        "|---:|---|---|---:|---|---|",
    ]
    for number, row in enumerate(rows, 1):
        counts = "; ".join(f"{k}: {v}" for k, v in row["counts"].items() if v is not None)
        status = "ran" if row["status"] == "ran" else "skipped"
        lines.append(
            f"| {number} | {row['stage']} | {status} ({_cell(row['reason'])}) | {row['seconds']:.0f} "
            f"| {_cell(counts)} | {_cell(' / '.join(row['said']))} |"
        )
    lines += ["", "## Evaluation", ""]
    if not any(report.get("summary") for report in evals.values()):
        lines.append("(the eval stage has not run)")
    for name, report in evals.items():
        summary = report.get("summary")
        if not summary:
            continue
        passk = ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary.items() if k.startswith("pass@"))
        lines.append(
            f"- **{name}**: {passk} over {summary['problems_scored']} problems "
            f"({summary['samples']} samples); outcomes {summary['outcomes']}; per problem: "
            f"`eval/{name}/report.md`"
        )
    lines += ["", TOY_NOTE, ""]
    for title, path in payload["images"].items():
        lines += [f"## {title[0].upper()}{title[1:]}", "", f"![{title}]({path})", ""]
    lines += ["## Where everything is", "", "| stage | inputs | outputs |", "|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['stage']} | {_cell(', '.join(row['inputs']) or '(none)')} | {_cell(', '.join(row['outputs']))} |"
        )
    lines += ["", "Each stage's record (its commands, key, output fingerprints): `stages/<stage>.json`.", ""]
    path = work / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
