"""What makes a training item resemble a benchmark problem (phi-1 paper, section 5): word n-grams and
AST node-type sequences, and the HumanEval / MBPP problems they are computed from.

``data_tools.decontaminate`` removes items by these signals; the graded problems are checked with them.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass
from typing import Sequence

from megaphi.common.errors import UserError

WORD = re.compile(r"\w+")
BENCHMARKS = ("humaneval", "mbpp")


class DecontaminationError(UserError):
    """Inputs or parameters that decontamination cannot work with."""


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    task_id: str
    text: str  # what n-grams and embeddings see: the prompt and the reference solution
    code: str  # what the AST is parsed from


def load_benchmark_items(
    benchmarks: Sequence[str], mbpp_path: str | None = None, problems: Sequence[str] = ()
) -> list[BenchmarkItem]:
    """The problems of ``benchmarks`` (MBPP's test split), or only those named in ``problems``."""
    from megaphi.eval.benchmarks import load_humaneval, load_mbpp

    items: list[BenchmarkItem] = []
    for name in benchmarks:
        if name == "humaneval":
            loaded = load_humaneval().problems
        elif name == "mbpp":
            loaded = load_mbpp(mbpp_path, split="test").problems
        else:
            raise DecontaminationError(f"unknown benchmark {name!r}: choose humaneval and/or mbpp")
        for p in loaded:
            # HumanEval's reference continues its prompt; MBPP's is a whole program on its own.
            code = p.prompt + p.reference if name == "humaneval" else p.reference
            items.append(BenchmarkItem(name, p.task_id, p.prompt + p.reference, code))
    if problems:
        unknown = sorted(set(problems) - {item.task_id for item in items})
        if unknown:
            raise DecontaminationError(
                f"--problems {unknown[0]!r} is not a problem of {' '.join(benchmarks)} (ids look like HumanEval/0, Mbpp/11)"
            )
        items = [item for item in items if item.task_id in set(problems)]
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
    size = len(problem_nodes)
    # Units closest in size first: a high best early lets the cheap upper bounds below skip the rest.
    for unit in sorted(candidate_units, key=lambda u: abs(len(u) - size)):
        # The ratio cannot exceed 2*min/(sum): skip units too different in size to beat the best.
        if 2 * min(len(unit), size) / (len(unit) + size) <= best:
            continue
        matcher.set_seq1(unit)
        # quick_ratio (shared node types, order ignored) bounds ratio from above at a fraction of its cost.
        if matcher.quick_ratio() <= best:
            continue
        best = max(best, matcher.ratio())
    return best
