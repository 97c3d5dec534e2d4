"""``python -m megaphi.eval graded`` and ``graded-table``: the options and the run.

graded       samples (generated from --model, or read from --samples) -> hidden tests in the
             sandbox -> judge -> graded_report.md / .json in --out-dir. Rerunning the same
             command resumes: scored samples are reused and judged samples are not asked again.
graded-table two or more graded --out-dirs -> one table, models side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from data_tools.llm import ClientConfig, client_config_from_args, run_requests
from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text
from megaphi.common.jsonl import iter_jsonl, read_jsonl
from megaphi.eval.benchmarks import Benchmark
from megaphi.eval.graded.judge import PROMPT_VERSION, judge_requests, record_verdict, sample_ids
from megaphi.eval.graded.problems import problems_by_task_id
from megaphi.eval.graded.report import aggregate, read_report, render_comparison, sample_rows, write_report
from megaphi.eval.score import read_samples, summarize

JUDGMENTS, JUDGE_FAILURES, JUDGE_RUNS = "judgments.jsonl", "judge_failures.jsonl", "judge_runs.jsonl"


def add_graded_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--samples", default=None, help='JSONL of {"task_id", "completion"} to grade instead of generating from --model'
    )
    parser.add_argument(
        "--out-dir",
        required=True,
        help="gets samples.jsonl, results.jsonl, judgments.jsonl, judge_failures.jsonl, graded_report.*",
    )
    judge = parser.add_argument_group("judge (any OpenAI-compatible chat endpoint, e.g. megaphi.serve)")
    judge.add_argument("--judge-model", required=True, help="model name the judge endpoint serves")
    judge.add_argument("--judge-base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (default: OpenAI)")
    judge.add_argument("--judge-api-key", default=None, help="default: $OPENAI_API_KEY")
    judge.add_argument("--judge-max-concurrency", type=int, default=ClientConfig.max_concurrency)
    judge.add_argument("--judge-requests-per-minute", type=float, default=None, help="request budget")
    judge.add_argument("--judge-tokens-per-minute", type=float, default=None, help="token budget")
    judge.add_argument(
        "--judge-max-attempts",
        type=int,
        default=4,
        help="tries per sample (errors and malformed verdicts) before it is recorded as ungraded",
    )
    judge.add_argument("--judge-timeout", type=float, default=ClientConfig.timeout_s, help="seconds per attempt")
    judge.add_argument("--judge-backoff-initial", type=float, default=ClientConfig.backoff_initial_s)
    judge.add_argument("--judge-backoff-max", type=float, default=ClientConfig.backoff_max_s)
    judge.add_argument("--judge-max-tokens", type=int, default=400, help="longest verdict")
    judge.add_argument("--judge-temperature", type=float, default=0.0)
    judge.add_argument("--judge-input-price", type=float, default=0.0, help="USD per million prompt tokens")
    judge.add_argument("--judge-output-price", type=float, default=0.0, help="USD per million completion tokens")
    judge.add_argument(
        "--judge-pass-score",
        type=int,
        default=7,
        help="a judge score counted as a pass when measuring agreement with the tests",
    )
    judge.add_argument("--judge-retry-failed", action="store_true", help="ask again for samples left ungraded")
    judge.add_argument("--no-progress", action="store_true")


def add_table_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", nargs="+", help="graded --out-dirs (or their graded_report.json), one per model")
    parser.add_argument("--names", nargs="+", default=None, help="column names (default: each report's model)")
    parser.add_argument("--out", default=None, help="write the table here too (Markdown)")


def judge_config(args: argparse.Namespace) -> ClientConfig:
    config = client_config_from_args(args, prefix="judge_", check=False)
    config.validate()
    if not (config.api_key or config.base_url or os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
        raise UserError(
            "no judge API key: set OPENAI_API_KEY or pass --judge-api-key "
            "(or --judge-base-url for a local server such as megaphi.serve)"
        )
    if not 0 <= args.judge_pass_score <= 10:
        raise UserError(f"--judge-pass-score must be from 0 to 10, got {args.judge_pass_score}")
    if args.judge_max_tokens < 1:
        raise UserError(f"--judge-max-tokens must be at least 1, got {args.judge_max_tokens}")
    return config


def _read_jsonl_by_id(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl(path)} if path.exists() else {}


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Whole or absent: a kill mid-write must not leave a short file that a rerun would take as complete."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _scored_samples(
    args: argparse.Namespace,
    out_dir: Path,
    generate: Callable[[], list[dict]],
    score: Callable[[list[dict]], list[dict]],
) -> list[dict]:
    """The scored samples of this --out-dir: reused when an earlier run scored them, else made now."""
    results_path = out_dir / "results.jsonl"
    given = read_samples(args.samples) if args.samples else None
    if results_path.exists():
        results = read_jsonl(results_path)
        if given is not None and [(s["task_id"], s["completion"]) for s in given] != [
            (r["task_id"], r["completion"]) for r in results
        ]:
            raise UserError(
                f"{results_path} holds the results of other samples than {args.samples}: "
                "use a fresh --out-dir (or remove that file to score these samples there)"
            )
        print(f"reusing {len(results)} scored samples from {results_path}", file=sys.stderr)
        return results
    samples = given if given is not None else generate()
    _write_jsonl_atomic(out_dir / "samples.jsonl", samples)
    results = score(samples)
    _write_jsonl_atomic(results_path, results)
    return results


def run_graded(
    args: argparse.Namespace,
    benchmark: Benchmark,
    *,
    generate: Callable[[], list[dict]],
    score: Callable[[list[dict]], list[dict]],
) -> dict:
    """Score (``generate``, ``score``: the HumanEval machinery, bound to the command's options), judge
    and report; returns the summary that the command prints."""
    if (args.samples is None) == (args.model is None):
        raise UserError("give exactly one of --model (generate samples) and --samples (grade these)")
    config = judge_config(args)  # a bad judge option fails before anything is generated
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file: pass a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _scored_samples(args, out_dir, generate, score)
    ids = sample_ids(results)
    problems = problems_by_task_id()
    _check_one_judge(out_dir / JUDGMENTS, args.judge_model)
    stats = run_requests(
        judge_requests(problems, results, ids, max_tokens=args.judge_max_tokens, temperature=args.judge_temperature),
        out_dir / JUDGMENTS,
        out_dir / JUDGE_FAILURES,
        config,
        process=record_verdict(args.judge_model),
        retry_failed=args.judge_retry_failed,
        progress=not args.no_progress,
        total=len(results),
    )
    with open(out_dir / JUDGE_RUNS, "a", encoding="utf-8") as runs:  # every call's tokens, retries included
        runs.write(
            json.dumps(
                {"date": datetime.now(timezone.utc).isoformat(), "judge_model": args.judge_model, **stats.to_dict()}
            )
            + "\n"
        )
    spent = [run for run in read_jsonl(out_dir / JUDGE_RUNS) if run.get("judge_model") == args.judge_model]
    spent_prompt, spent_completion = sum(r["prompt_tokens"] for r in spent), sum(r["completion_tokens"] for r in spent)
    judgments = _read_jsonl_by_id(out_dir / JUDGMENTS)
    rows = sample_rows(results, ids, judgments, _read_jsonl_by_id(out_dir / JUDGE_FAILURES))
    used = [judgments[row["sample_id"]] for row in rows if row["score"] is not None]
    prompt_tokens = sum(j["usage"]["prompt_tokens"] for j in used)
    completion_tokens = sum(j["usage"]["completion_tokens"] for j in used)

    def usd(prompt: int, completion: int) -> float:
        return (prompt * config.input_price_per_mtok + completion * config.output_price_per_mtok) / 1e6

    summary = {**summarize(benchmark, results), **aggregate(rows, args.judge_pass_score)}
    metadata = {
        "model": args.model or args.samples,
        "judge model": args.judge_model,
        "judge endpoint": config.base_url or os.environ.get("OPENAI_BASE_URL") or "api.openai.com",
        "judge prompt": PROMPT_VERSION,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "judge tokens": f"{prompt_tokens} prompt + {completion_tokens} completion for the graded samples' verdicts; "
        f"{spent_prompt} + {spent_completion} in all calls of {len(spent)} finished run(s), retries included",
        "judge cost (USD)": f"{usd(prompt_tokens, completion_tokens):.4f} for the verdicts, "
        f"{usd(spent_prompt, spent_completion):.4f} in all, at {config.input_price_per_mtok:g} / "
        f"{config.output_price_per_mtok:g} per million prompt / completion tokens",
        "judge requests this run": f"{stats.succeeded} graded, {stats.failed} ungraded, {stats.retries} retries "
        f"({dict(stats.retry_reasons)}), {stats.already_done + stats.failed_before} "
        "settled by an earlier run",
    }
    write_report(out_dir, {"summary": summary, "metadata": metadata, "samples": rows})
    return summary


def _check_one_judge(judgments_path: Path, judge_model: str) -> None:
    """Judgments of another judge or rubric version in the same --out-dir would mix into one score."""
    # on_error="skip": a torn last line from a killed run (the client's store cuts it off)
    for row in iter_jsonl(judgments_path, on_error="skip") if judgments_path.exists() else []:
        if (row.get("judge_model"), row.get("prompt_version")) != (judge_model, PROMPT_VERSION):
            raise UserError(
                f"{judgments_path} holds judgments by {row.get('judge_model')!r} with prompt "
                f"{row.get('prompt_version')!r}, not {judge_model!r} with {PROMPT_VERSION!r}: "
                "use a fresh --out-dir for another judge"
            )


def run_table(args: argparse.Namespace) -> None:
    reports = [read_report(path) for path in args.reports]
    names = args.names or [str(r["metadata"].get("model")) for r in reports]
    if len(names) != len(reports):
        raise UserError(f"--names gives {len(names)} names for {len(reports)} reports")
    table = render_comparison(reports, names)
    if args.out:
        atomic_write_text(args.out, table)
    print(table, end="")
