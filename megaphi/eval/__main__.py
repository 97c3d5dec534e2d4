"""python -m megaphi.eval {generate,score,run}: HumanEval / MBPP pass@k in a bubblewrap sandbox.

generate  draw completions from a megaphi checkpoint or Hugging Face Phi directory -> samples.jsonl
score     run each sample's test program in the sandbox -> results.jsonl, prints a JSON summary
run       both, plus report.md and report.json with per-problem results, into --out-dir
graded    the graded problems: hidden tests plus an LLM judge's 0-10 score (megaphi/eval/graded)
graded-table  graded reports of several models side by side
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.eval.benchmarks import BENCHMARKS, MBPP_SPLITS, Benchmark, load_benchmark
from megaphi.eval.graded.cli import add_graded_args, add_table_args, run_graded, run_table
from megaphi.eval.report import write_report
from megaphi.eval.sampling import NOT_GENERATED, SamplingConfig, generate_samples, not_generated_results
from megaphi.eval.score import read_samples, score_samples, summarize, write_jsonl
from megaphi.progress import progress

SCORE_SLICE = 256  # programs scored between two progress updates


def _add_benchmark_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument(
        "--mbpp-path", default=None, help="MBPP's mbpp.jsonl (default: the Hugging Face hub, when reachable)"
    )
    parser.add_argument(
        "--mbpp-split",
        default="test",
        choices=list(MBPP_SPLITS),
        help="task ids 11-510 for test (default), as phi-1 reports",
    )


def _add_generation_args(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    parser.add_argument(
        "--model",
        required=model_required,
        help="megaphi checkpoint (tag dir or root with `latest`) or Hugging Face model directory",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--n-samples", type=int, default=1, help="completions per problem")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")


def _add_scoring_args(parser: argparse.ArgumentParser) -> None:
    # named as in data_tools.synth, which runs exercises in the same sandbox (--timeout, --memory-mb: older names)
    parser.add_argument(
        "--sandbox-timeout",
        "--timeout",
        dest="timeout",
        type=float,
        default=10.0,
        help="CPU seconds per sample (at most 3x that in wall-clock time)",
    )
    parser.add_argument(
        "--sandbox-memory-mb",
        "--memory-mb",
        dest="memory_mb",
        type=int,
        default=1024,
        help="memory of each sandbox (its cgroup: shared memory and /tmp included), and address space per process",
    )
    parser.add_argument("--workers", type=int, default=None, help="samples at once (default: 2 per CPU core)")
    parser.add_argument(
        "--sandbox-python", default=None, help="interpreter inside the sandbox (default: /usr/bin/python3)"
    )
    parser.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run model-written code WITHOUT isolation (only where bwrap cannot run)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megaphi.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="draw completions -> samples.jsonl")
    _add_benchmark_args(generate)
    _add_generation_args(generate)
    generate.add_argument("--out", required=True, help="samples JSONL to write")
    score = commands.add_parser("score", help="score samples in the sandbox -> results.jsonl + JSON summary")
    _add_benchmark_args(score)
    score.add_argument("--samples", required=True, help='JSONL of {"task_id", "completion"}')
    score.add_argument("--out", required=True, help="results JSONL to write")
    _add_scoring_args(score)
    run = commands.add_parser("run", help="generate, score and report into --out-dir")
    _add_benchmark_args(run)
    _add_generation_args(run)
    _add_scoring_args(run)
    run.add_argument("--out-dir", required=True, help="gets samples.jsonl, results.jsonl, report.md, report.json")
    graded = commands.add_parser("graded", help="graded problems: hidden tests + LLM judge -> graded_report.md")
    _add_generation_args(graded, model_required=False)
    _add_scoring_args(graded)
    add_graded_args(graded)
    graded.set_defaults(benchmark="graded", mbpp_path=None, mbpp_split="test")
    add_table_args(commands.add_parser("graded-table", help="graded reports of several models side by side"))
    return parser


def _sampling(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(
        n_samples=args.n_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit,
    )


def _score(args: argparse.Namespace, benchmark: Benchmark, samples: list[dict]) -> tuple[list[dict], dict]:
    runnable = [s for s in samples if NOT_GENERATED not in s]
    results: list[dict] = []
    # In slices, to show progress: a full HumanEval run at n=100 is 16,400 programs.
    with progress(total=len(runnable), desc="score", unit="programs") as bar:
        for start in range(0, len(runnable), SCORE_SLICE):
            results += score_samples(
                benchmark,
                runnable[start : start + SCORE_SLICE],
                timeout_s=args.timeout,
                memory_mb=args.memory_mb,
                workers=args.workers,
                unsafe_no_sandbox=args.unsafe_no_sandbox,
                python=args.sandbox_python,
            )
            bar.update(min(SCORE_SLICE, len(runnable) - start))
    results = not_generated_results(samples, results)
    summary = summarize(benchmark, results)
    summary["not_generated"] = len(samples) - len(runnable)
    if summary["not_generated"]:
        print(
            f"warning: {summary['not_generated']} samples were not generated (prompt longer than the model's "
            f"context) and score as failed; see results.jsonl",
            file=sys.stderr,
        )
    if summary["problems_scored"] < summary["problems_in_benchmark"]:
        print(
            f"warning: samples cover {summary['problems_scored']} of {summary['problems_in_benchmark']} "
            f"{benchmark.name} problems; pass@k is over those only",
            file=sys.stderr,
        )
    return results, summary


def run_command(args: argparse.Namespace) -> dict | None:
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    for flag, value in (
        ("--sandbox-timeout", getattr(args, "timeout", 1)),
        ("--sandbox-memory-mb", getattr(args, "memory_mb", 1)),
    ):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if args.command == "graded-table":
        run_table(args)
        return None
    benchmark = load_benchmark(args.benchmark, mbpp_path=args.mbpp_path, mbpp_split=args.mbpp_split)
    if args.command == "graded":
        sampling = None if args.samples else _sampling(args)

        def generate() -> list[dict]:
            assert sampling is not None  # run_graded generates only without --samples
            return generate_samples(benchmark, args.model, sampling, device=args.device, tokenizer=args.tokenizer)

        return run_graded(args, benchmark, score=lambda samples: _score(args, benchmark, samples)[0], generate=generate)
    if args.command == "generate":
        samples = generate_samples(benchmark, args.model, _sampling(args), device=args.device, tokenizer=args.tokenizer)
        write_jsonl(args.out, samples)
        print(f"wrote {len(samples)} samples to {args.out}", file=sys.stderr)
        return None
    if args.command == "score":
        results, summary = _score(args, benchmark, read_samples(args.samples))
        write_jsonl(args.out, results)
        return summary
    sampling = _sampling(args)  # validate before loading anything
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is a file: pass a directory for the samples, results and reports")
    samples = generate_samples(benchmark, args.model, sampling, device=args.device, tokenizer=args.tokenizer)
    write_jsonl(out_dir / "samples.jsonl", samples)
    results, summary = _score(args, benchmark, samples)
    write_jsonl(out_dir / "results.jsonl", results)
    metadata = {
        "model": args.model,
        "n_samples": sampling.n_samples,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "sandbox": "none (--unsafe-no-sandbox)" if args.unsafe_no_sandbox else "bubblewrap",
        "samples not generated (prompt longer than the model's context)": summary["not_generated"],
    }
    write_report(out_dir, summary, results, metadata)
    return summary


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = run_command(args)
    if summary is not None:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
