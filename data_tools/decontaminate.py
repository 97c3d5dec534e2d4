"""Remove training items that resemble HumanEval / MBPP problems, and report how close each problem's
nearest training items are (phi-1 paper, section 5 and Table 3).

Three signals, as in the paper:
- n-gram overlap: a training item sharing any word 13-gram with a benchmark problem (its prompt and
  reference solution) is removed;
- embedding distance: the L2 distance between L2-normalised embeddings (``data_tools.embed``;
  MiniLM by default, or a code model's mean-pooled hidden states) picks each problem's ``--top-k``
  nearest training items;
- AST match rate: for those candidates (and every n-gram hit), the similarity of the problem's AST
  node-type sequence to the candidate's, whole or any one function of it (difflib's ratio on
  pre-order node-type sequences; names, constants, docstrings, annotations and imports ignored).
  A candidate at or above ``--ast-threshold`` is removed. Problems whose AST has fewer than
  ``--min-ast-nodes`` nodes (one-liners such as ``return len(string)``) are judged by n-grams alone:
  their shape occurs in most code, so an AST match there says nothing.

The report lists, per problem, its closest training items with both scores and, for every tau in
``--report-taus`` (the paper's 0.95, 0.9, 0.85, 0.8), whether the problem has a training item with an
AST match rate >= tau: the split into "similar" and "non-similar" problems of the paper's Table 3.

    python -m data_tools.decontaminate --input data/exercises-*.jsonl --output-prefix data/exercises-clean \\
        --benchmarks humaneval mbpp --mbpp-path mbpp.jsonl
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_tools.embed import encode_with_progress
from data_tools.jsonl import (
    ON_ERROR_CHOICES,
    JsonlShardWriter,
    OnError,
    ReadStats,
    expand_inputs,
    iter_records,
    record_id,
    record_text,
)
from megaphi.common.files import atomic_open, atomic_write_text
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.progress import progress

WORD = re.compile(r"\w+")
PAPER_TAUS = (0.95, 0.9, 0.85, 0.8)


class DecontaminationError(UserError):
    """Inputs or parameters that decontamination cannot work with."""


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    task_id: str
    text: str  # what n-grams and embeddings see: the prompt and the reference solution
    code: str  # what the AST is parsed from


def load_benchmark_items(benchmarks: Sequence[str], mbpp_path: str | None = None) -> list[BenchmarkItem]:
    from megaphi.eval.benchmarks import load_humaneval, load_mbpp

    items: list[BenchmarkItem] = []
    for name in benchmarks:
        if name == "humaneval":
            problems = load_humaneval().problems
        elif name == "mbpp":
            problems = load_mbpp(mbpp_path, split="test").problems
        else:
            raise DecontaminationError(f"unknown benchmark {name!r}: choose humaneval and/or mbpp")
        for p in problems:
            # HumanEval's reference continues its prompt; MBPP's is a whole program on its own.
            code = p.prompt + p.reference if name == "humaneval" else p.reference
            items.append(BenchmarkItem(name, p.task_id, p.prompt + p.reference, code))
    return items


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


_CONTEXT_NODES = (ast.Load, ast.Store, ast.Del)
_ANNOTATION_FIELDS = {"annotation", "returns", "type_comment"}


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _node_types(root: ast.AST) -> list[str]:
    """Pre-order node-type names below ``root``. What does not change what a program does is left
    out, so that it cannot hide a copy: imports, docstrings, type annotations, load/store contexts."""
    out: list[str] = []
    stack: list[ast.AST] = [root]
    while stack:
        node = stack.pop()
        out.append(type(node).__name__)
        children = [
            child
            for name, value in ast.iter_fields(node)
            if name not in _ANNOTATION_FIELDS
            for child in (value if isinstance(value, list) else [value])
            if isinstance(child, ast.AST)
            and not isinstance(child, (*_CONTEXT_NODES, ast.Import, ast.ImportFrom))
            and not _is_docstring(child)
        ]
        stack.extend(reversed(children))
    return out


def ast_node_types(code: str) -> list[str] | None:
    """Node-type sequence of a whole program, or None when it does not parse."""
    tree = _parse(code)
    return None if tree is None else _node_types(tree)


def ast_units(code: str) -> list[list[str]] | None:
    """Node-type sequences of the whole program and of each function in it: a copied solution
    inside a long file is then compared with the copy alone, not diluted by the rest of the file."""
    tree = _parse(code)
    if tree is None:
        return None
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [_node_types(tree)] + [[type(tree).__name__, *_node_types(fn)] for fn in functions]


def ast_match_rate(problem_nodes: list[str] | None, candidate_units: list[list[str]] | None) -> float:
    """Best similarity 2*M/T (difflib's ratio: M nodes matched in order, T nodes in both) between the
    problem's node sequence and any unit of the candidate (the whole program or one function)."""
    if not problem_nodes or not candidate_units:
        return 0.0
    best = 0.0
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(problem_nodes)  # difflib caches the second sequence
    for unit in candidate_units:
        # The ratio cannot exceed 2*min/(sum): skip units too different in size to beat the best.
        if 2 * min(len(unit), len(problem_nodes)) / (len(unit) + len(problem_nodes)) <= best:
            continue
        matcher.set_seq1(unit)
        best = max(best, matcher.ratio())
    return best


@dataclass
class DecontaminationParams:
    ngram: int = 13
    top_k: int = 10
    ast_threshold: float = 0.95
    min_ast_nodes: int = 20
    report_taus: tuple[float, ...] = PAPER_TAUS
    embedder: str = "minilm"
    text_key: str = "text"

    def validate(self) -> None:
        if self.ngram < 1:
            raise DecontaminationError(f"--ngram must be at least 1, got {self.ngram}")
        if self.top_k < 1:
            raise DecontaminationError(f"--top-k must be at least 1, got {self.top_k}")
        for tau in (self.ast_threshold, *self.report_taus):
            if not 0.0 < tau <= 1.0:
                raise DecontaminationError(f"AST match thresholds must be in (0, 1], got {tau}")


@dataclass
class DecontaminationResult:
    documents: int = 0
    kept: int = 0
    removed_ngram: int = 0
    removed_ast: int = 0
    read: ReadStats = field(default_factory=ReadStats)
    similar_problems: dict[str, int] = field(default_factory=dict)  # tau -> problems with a match >= tau

    def summary(self) -> str:
        similar = ", ".join(f"tau {t}: {n}" for t, n in self.similar_problems.items())
        return (
            f"read {self.documents} items: kept {self.kept}, removed {self.removed_ngram} for 13-gram overlap and "
            f"{self.removed_ast} for AST similarity; problems with a similar training item: {similar}"
        )


def decontaminate(
    inputs: Sequence[str | os.PathLike],
    output_prefix: str | os.PathLike,
    benchmark_items: Sequence[BenchmarkItem],
    params: DecontaminationParams = DecontaminationParams(),
    *,
    on_error: OnError = "stop",
    embedder=None,
) -> DecontaminationResult:
    """Write kept records to ``{prefix}-NNNNN.jsonl``, removed ones with reasons to
    ``{prefix}.removed.jsonl`` and the per-problem report to ``{prefix}.decontamination.json``.

    Training items are held in memory once (texts, embeddings, AST sequences of the candidates):
    decontamination runs on the filtered and synthetic sets, not on raw crawls."""
    params.validate()
    if not benchmark_items:
        raise DecontaminationError("no benchmark problems to decontaminate against")
    result = DecontaminationResult()
    records = list(iter_records(expand_inputs(inputs), on_error=on_error, stats=result.read))
    if not records:
        raise DecontaminationError(f"inputs {list(map(str, inputs))} hold no records")
    texts = [record_text(r, params.text_key, i) for i, r in enumerate(records)]
    ids = [record_id(r, i) for i, r in enumerate(records)]
    result.documents = len(records)

    # n-gram overlap: one index of every benchmark n-gram, each training item checked against it.
    ngram_owner: dict[tuple[str, ...], int] = {}
    for p, item in enumerate(benchmark_items):
        for gram in word_ngrams(item.text, params.ngram):
            ngram_owner.setdefault(gram, p)
    ngram_hits: dict[int, set[int]] = {}  # training index -> problems it overlaps
    for t, text in enumerate(progress(texts, desc=f"{params.ngram}-gram overlap", unit="items")):
        hits = {ngram_owner[g] for g in word_ngrams(text, params.ngram) if g in ngram_owner}
        if hits:
            ngram_hits[t] = hits

    if embedder is None:
        from data_tools.embed import load_embedder

        embedder = load_embedder(params.embedder)
    train_vectors = encode_with_progress(embedder, texts, desc="embed training items")
    problem_vectors = embedder.encode([item.text for item in benchmark_items])
    # For unit vectors ||a - b||^2 = 2 - 2 a.b: nearest by one matrix product.
    similarity = problem_vectors @ train_vectors.T
    k = min(params.top_k, len(texts))
    nearest = np.argsort(-similarity, axis=1)[:, :k]

    train_nodes: dict[int, list[list[str]] | None] = {}
    problems_report = []
    removed: dict[int, dict[str, Any]] = {}
    for p, item in enumerate(progress(benchmark_items, desc="AST similarity", unit="problems")):
        problem_nodes = ast_node_types(item.code)
        judged_by_ast = problem_nodes is not None and len(problem_nodes) >= params.min_ast_nodes
        candidates = list(dict.fromkeys([*nearest[p].tolist(), *(t for t, hs in ngram_hits.items() if p in hs)]))
        closest = []
        for t in candidates:
            if t not in train_nodes:
                train_nodes[t] = ast_units(texts[t])
            match = ast_match_rate(problem_nodes, train_nodes[t]) if judged_by_ast else 0.0
            l2 = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(similarity[p, t]))))
            overlap = t in ngram_hits and p in ngram_hits[t]
            closest.append(
                {"id": ids[t], "l2_distance": round(l2, 4), "ast_match_rate": round(match, 4), "ngram_overlap": overlap}
            )
            if overlap:
                removed.setdefault(
                    t,
                    {
                        "id": ids[t],
                        "reason": f"{params.ngram}-gram overlap",
                        "benchmark": item.benchmark,
                        "task_id": item.task_id,
                    },
                )
            elif match >= params.ast_threshold:
                removed.setdefault(
                    t,
                    {
                        "id": ids[t],
                        "reason": "ast match",
                        "ast_match_rate": round(match, 4),
                        "benchmark": item.benchmark,
                        "task_id": item.task_id,
                    },
                )
        closest.sort(key=lambda c: c["l2_distance"])
        best = max((c["ast_match_rate"] for c in closest), default=0.0)
        problems_report.append(
            {
                "benchmark": item.benchmark,
                "task_id": item.task_id,
                "parses": problem_nodes is not None,
                "judged_by_ast": judged_by_ast,
                "max_ast_match_rate": best,
                "ngram_overlaps": sum(c["ngram_overlap"] for c in closest),
                "similar_at": {str(tau): best >= tau for tau in params.report_taus},
                "closest": closest,
            }
        )

    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with JsonlShardWriter(prefix) as writer, atomic_open(f"{prefix}.removed.jsonl") as removed_file:
        for t, record in enumerate(records):
            if t in removed:
                removed_file.write(json.dumps(removed[t]) + "\n")
            else:
                writer.write(record)
        shards = [str(p) for p in writer.paths]
    result.kept = len(records) - len(removed)
    result.removed_ngram = sum(1 for r in removed.values() if r["reason"] != "ast match")
    result.removed_ast = len(removed) - result.removed_ngram
    result.similar_problems = {
        str(tau): sum(r["similar_at"][str(tau)] for r in problems_report) for tau in params.report_taus
    }
    report = {
        "params": {**params.__dict__, "report_taus": list(params.report_taus)},
        "embedder": getattr(embedder, "name", params.embedder),
        "documents": result.documents,
        "kept": result.kept,
        "removed_ngram": result.removed_ngram,
        "removed_ast": result.removed_ast,
        "similar_problems": result.similar_problems,
        "shards": shards,
        "problems": problems_report,
    }
    atomic_write_text(f"{prefix}.decontamination.json", json.dumps(report, indent=1) + "\n")
    return result


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.decontaminate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", nargs="+", required=True, help="JSONL/parquet files, globs or directories")
    parser.add_argument("--output-prefix", required=True, help="kept shards go to PREFIX-NNNNN.jsonl")
    parser.add_argument("--benchmarks", nargs="+", default=["humaneval", "mbpp"], choices=["humaneval", "mbpp"])
    parser.add_argument("--mbpp-path", help="MBPP's mbpp.jsonl (without it MBPP comes from the Hugging Face hub)")
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--ngram", type=int, default=13, help="words per n-gram for the overlap test")
    parser.add_argument("--top-k", type=int, default=10, help="nearest training items by embedding checked per problem")
    parser.add_argument("--ast-threshold", type=float, default=0.95, help="AST match rate at which an item is removed")
    parser.add_argument(
        "--min-ast-nodes", type=int, default=20, help="problems with a smaller AST are judged by n-gram overlap alone"
    )
    parser.add_argument("--report-taus", type=float, nargs="+", default=list(PAPER_TAUS))
    parser.add_argument("--embedder", default="minilm", help="'minilm' or a megaphi/Hugging Face model directory")
    parser.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="stop")
    args = parser.parse_args(argv)
    params = DecontaminationParams(
        ngram=args.ngram,
        top_k=args.top_k,
        ast_threshold=args.ast_threshold,
        min_ast_nodes=args.min_ast_nodes,
        report_taus=tuple(args.report_taus),
        embedder=args.embedder,
        text_key=args.text_key,
    )
    params.validate()  # before the benchmarks load (MBPP from the hub can take a while to fail)
    if "mbpp" in args.benchmarks and args.mbpp_path is None:
        print("note: no --mbpp-path: loading MBPP from the Hugging Face hub", file=sys.stderr)
    items = load_benchmark_items(args.benchmarks, args.mbpp_path)
    result = decontaminate(args.input, args.output_prefix, items, params, on_error=args.on_error)
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
