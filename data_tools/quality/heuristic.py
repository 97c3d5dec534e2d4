"""heuristic-v1: an offline stand-in for the LLM annotator, NOT a judge of educational value.

The paper labelled files with GPT-4. Without a network this heuristic produces labels of the same
shape from signals that correlate with "explains itself to a learner", so that the classifier,
the filter and their tests run end to end. It is deliberately simple and stated as such in every
annotation it writes ("annotator": "heuristic-v1"); use an LLM annotator for real data.

Signals (Python; other languages parse as "no syntax tree" and score low):
- documentation: share of functions/classes with a docstring, and comment lines per code line;
- function size: short-to-medium functions read well, hundred-line functions do not;
- penalties: auto-generated markers, module-level data tables (big literal assignments),
  import-only or tiny files, files that do not parse.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize

from data_tools.quality.labels import Label

NAME = "heuristic-v1"
_GENERATED = re.compile(r"auto-?generated|automatically generated|do not (?:edit|modify)", re.IGNORECASE)
_LITERALS = (ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant)
HIGH_AT, MEDIUM_AT = 0.55, 0.3  # score thresholds of the levels
GOOD_COMMENT_DENSITY = 0.15  # a comment line per ~7 code lines earns the full comment credit
LONG_FUNCTION_LINES = 40


def _comment_lines(text: str) -> set[int]:
    lines = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT and not token.string.startswith(("#!", "# -*-")):
                lines.add(token.start[0])
    except (tokenize.TokenError, SyntaxError):
        pass
    return lines


def _lines(node: ast.stmt) -> int:
    """The lines a statement spans (the parser sets ``end_lineno`` on every node it makes)."""
    return (node.end_lineno or node.lineno) - node.lineno + 1


def features(text: str) -> dict[str, float | int | bool]:
    """The measurements the score is made of (stored in the annotation for auditing)."""
    lines = text.splitlines()
    nonblank = [i for i, line in enumerate(lines, 1) if line.strip()]
    comments = _comment_lines(text)
    code_lines = max(1, len([i for i in nonblank if i not in comments]))
    out: dict[str, float | int | bool] = {
        "lines": len(lines),
        "code_lines": code_lines,
        "comment_density": round(len(comments) / code_lines, 4),
        "generated": bool(_GENERATED.search("\n".join(lines[:30]))),
    }
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        out["parses"] = False
        return out
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    functions = [n for n in defs if not isinstance(n, ast.ClassDef)]
    data_lines = sum(
        _lines(n) for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, _LITERALS)
    )
    imports = sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)
    out.update(
        {
            "parses": True,
            "module_docstring": ast.get_docstring(tree) is not None,
            "definitions": len(defs),
            "docstring_fraction": round(sum(ast.get_docstring(n) is not None for n in defs) / len(defs), 4)
            if defs
            else 0.0,
            "mean_function_lines": round(sum(_lines(n) for n in functions) / len(functions), 2) if functions else 0.0,
            "data_fraction": round(min(1.0, data_lines / max(1, len(nonblank))), 4),
            "import_fraction": round(imports / max(1, len(tree.body)), 4),
        }
    )
    return out


def score(f: dict[str, float | int | bool]) -> float:
    """A value in [0, 1] from :func:`features`; higher reads more like teaching material."""
    if not f["parses"]:
        return 0.0
    documentation = (
        0.5 * f["docstring_fraction"]
        + 0.5 * min(1.0, f["comment_density"] / GOOD_COMMENT_DENSITY)
        + (0.1 if f["module_docstring"] else 0.0)
    )
    if f["mean_function_lines"] == 0:
        size = 0.3  # scripts without functions teach less structure
    else:
        size = min(1.0, LONG_FUNCTION_LINES / f["mean_function_lines"])
    value = 0.6 * min(1.0, documentation) + 0.4 * size
    if f["generated"]:
        value *= 0.2
    value *= 1.0 - f["data_fraction"]
    if f["code_lines"] < 5 or f["import_fraction"] > 0.5:
        value *= 0.5
    return round(value, 4)


def annotate_text(text: str) -> tuple[Label, str]:
    """The heuristic's label for one file and its "raw answer": the features and score as JSON."""
    f = features(text)
    value = score(f)
    level = "high" if value >= HIGH_AT else "medium" if value >= MEDIUM_AT else "low"
    return Label(level), json.dumps({"score": value, **f}, sort_keys=True)
