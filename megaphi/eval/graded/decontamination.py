"""Check the graded problems against HumanEval and MBPP with megaphi's own decontamination
(``data_tools.decontaminate``: 13-gram overlap, embedding distance, AST match rate) and write the
report, ``DECONTAMINATION.md``, beside the problems.

The graded problems play the part of training items: each one's prompt and reference is compared
with every HumanEval problem and every MBPP test-split problem (``top_k`` covers the whole set, so
each pair is measured). A problem that decontamination would remove is a problem to rewrite.

    python -m megaphi.eval.graded.decontamination --mbpp-path mbpp.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data_tools.decontaminate import DecontaminateConfig, load_benchmark_items, run
from data_tools.executors import ExecutorOptions
from megaphi.common.cli import entry_point
from megaphi.common.jsonl import read_jsonl
from megaphi.eval.graded.problems import PROBLEMS_DIR, load_problems

REPORT_PATH = PROBLEMS_DIR.parent / "DECONTAMINATION.md"


def check_problems(mbpp_path: str | None) -> dict:
    """Per graded problem: its nearest benchmark problem by embedding, its highest AST match, its 13-gram
    overlaps; plus what decontamination would remove."""
    import numpy as np

    from data_tools.embed import load_embedder

    problems = load_problems()
    items = load_benchmark_items(["humaneval", "mbpp"], mbpp_path)
    embedder = load_embedder(DecontaminateConfig().embedder)
    # A yardstick for the distances: how near each HumanEval problem comes to MBPP, two sets written apart.
    humaneval = embedder.encode([i.text for i in items if i.benchmark == "humaneval"])
    mbpp = embedder.encode([i.text for i in items if i.benchmark == "mbpp"])
    cross = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * (humaneval @ mbpp.T).max(axis=1)))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "graded.jsonl"
        source.write_text(
            "".join(json.dumps({"id": p.task_id, "text": p.prompt + p.reference}) + "\n" for p in problems)
        )
        # top_k covers every problem both ways: each graded problem is AST-compared with every benchmark
        # problem, and each benchmark problem lists every graded problem.
        config = DecontaminateConfig(
            deep_input=[str(source)],
            output_prefix=str(Path(tmp) / "kept"),
            mbpp_path=mbpp_path,
            top_k=max(len(problems), len(items)),
        )
        report = run(config, ExecutorOptions(workers=1))
        assert report is not None  # a local run returns its report
        removed = read_jsonl(Path(f"{Path(tmp) / 'kept'}.removed.jsonl"))
    rows: dict[str, dict[str, Any]] = {
        p.task_id: {
            "task_id": p.task_id,
            "nearest": None,
            "l2_distance": 9.0,
            "ast_task": None,
            "ast_match_rate": 0.0,
            "ngram_overlaps": [],
        }
        for p in problems
    }
    for bench in report["problems"]:
        for close in bench["closest"]:
            row = rows[close["id"]]
            if close["l2_distance"] < row["l2_distance"]:
                row["nearest"], row["l2_distance"] = bench["task_id"], close["l2_distance"]
            if close["ast_match_rate"] > row["ast_match_rate"]:
                row["ast_task"], row["ast_match_rate"] = bench["task_id"], close["ast_match_rate"]
            if close["ngram_overlap"]:
                row["ngram_overlaps"].append(bench["task_id"])
    return {
        "problems": len(problems),
        "humaneval": sum(i.benchmark == "humaneval" for i in items),
        "mbpp": sum(i.benchmark == "mbpp" for i in items),
        "params": report["params"],
        "embedder": report["embedder"],
        "removed": removed,
        "kept": report["kept"],
        "humaneval_to_mbpp_l2": {"min": float(cross.min()), "median": float(np.median(cross))},
        "rows": sorted(rows.values(), key=lambda r: r["l2_distance"]),
    }


def render(check: dict) -> str:
    p = check["params"]
    lines = [
        "# Decontamination of the graded problems",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d')}; command: "
        "`python -m megaphi.eval.graded.decontamination --mbpp-path mbpp.jsonl`",
        f"- compared: the {check['problems']} graded problems (prompt + reference) with {check['humaneval']} HumanEval "
        f"problems and {check['mbpp']} MBPP test-split problems, every pair",
        f"- signals (`data_tools.decontaminate`): word {p['ngram']}-gram overlap; L2 distance of `{check['embedder']}` "
        f"embeddings; AST match rate (removal at >= {p['ast_threshold']}, benchmark problems of >= "
        f"{p['min_ast_nodes']} AST nodes)",
        f"- **removed: {len(check['removed'])} of {check['problems']}** "
        f"({', '.join(r['id'] + ': ' + r['reason'] for r in check['removed']) or 'none'})",
        "- the unit test `tests/megaphi/eval/test_graded_problems.py` reruns the 13-gram check on every change",
        "",
        "Problems nearest to a benchmark problem first. For scale, the same embedder puts each HumanEval problem "
        f"at L2 distance {check['humaneval_to_mbpp_l2']['median']:.3f} (median) from its nearest MBPP problem, "
        f"{check['humaneval_to_mbpp_l2']['min']:.3f} at the closest.",
        "",
        "| graded problem | nearest benchmark problem (embedding) | L2 distance | highest AST match | rate | 13-gram overlaps |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in check["rows"]:
        lines.append(
            f"| {row['task_id']} | {row['nearest']} | {row['l2_distance']:.3f} | {row['ast_task'] or '-'} "
            f"| {row['ast_match_rate']:.3f} | {', '.join(row['ngram_overlaps']) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m megaphi.eval.graded.decontamination",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mbpp-path", required=True, help="MBPP's mbpp.jsonl")
    parser.add_argument("--out", default=str(REPORT_PATH), help="where the Markdown report goes")
    args = parser.parse_args(argv)
    check = check_problems(args.mbpp_path)
    Path(args.out).write_text(render(check))
    print(f"{len(check['removed'])} of {check['problems']} graded problems would be removed; report: {args.out}")
    return 1 if check["removed"] else 0


if __name__ == "__main__":
    sys.exit(main())
