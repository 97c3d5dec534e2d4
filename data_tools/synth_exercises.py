"""Synthetic exercises: a model's answer parsed into HumanEval's shape, checked in the sandbox, and
near duplicates recognised (data_tools.synth exercises).

An exercise is kept only if it parses into a function with a docstring, a solution body and a
``check(candidate)`` that asserts on calls of it, and its solution passes those tests in the
evaluation sandbox (``ExerciseValidator``, run as each answer arrives); the merge of a run's tasks
then drops one whose solution and tests nearly repeat an earlier id's (``SolutionDeduplicator``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass
from typing import Any

from data_tools.dedup import Deduplicator, DedupParams, exact_key, signature
from data_tools.llm import LLMRequest, LLMResponse, Rejected, usage_of
from megaphi.eval.sandbox import SandboxResult, run_programs

CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class Exercise:
    """HumanEval's shape: prompt (imports + signature + docstring), solution body, check(candidate)."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    def program(self) -> str:
        return f"{self.prompt}{self.canonical_solution}\n\n{self.test}\n\ncheck({self.entry_point})\n"

    def to_dict(self) -> dict[str, str]:
        # ``text`` is what the later stages (dedup, decontaminate, preprocess) read: the exercise as the
        # model is finetuned on it, signature and docstring followed by the solution (the paper's
        # CodeExercises); the tests stay out of the training text.
        return {**asdict(self), "text": self.prompt + self.canonical_solution}


def parse_exercise(text: str, entry_point: str, task_id: str) -> Exercise:
    """Splits a model's answer into an Exercise; a Rejected names what is missing or broken."""
    blocks = CODE_BLOCK.findall(text)
    if not blocks:
        raise Rejected("no ```python code block in the answer")
    code = "\n\n".join(block.strip("\n") for block in blocks) + "\n"
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise Rejected(f"does not parse: {exc.msg} (line {exc.lineno})") from None
    lines = code.splitlines(keepends=True)
    function = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point), None)
    if function is None:
        raise Rejected(f"no top-level function named {entry_point!r}")
    function_end = _end_line(function)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or check.lineno < function_end:
        raise Rejected("no `def check(candidate)` after the function")
    if ast.get_docstring(function) is None:
        raise Rejected(f"{entry_point} has no docstring")
    if len(function.body) < 2:
        raise Rejected(f"{entry_point} has no solution body after its docstring")
    asserts = [n for n in ast.walk(check) if isinstance(n, ast.Assert)]
    uses_candidate = (
        any(isinstance(n, ast.Name) and n.id == check.args.args[0].arg for n in ast.walk(check))
        if check.args.args
        else False
    )
    if not asserts or not uses_candidate:
        raise Rejected("check(candidate) must assert on calls of candidate")
    docstring_end = _end_line(function.body[0])
    prompt = "".join(lines[:docstring_end])
    # Keep helpers between the function and the tests, drop a trailing `check(...)` call: the
    # program appends its own.
    test_nodes = [
        n
        for n in tree.body[tree.body.index(function) + 1 :]
        if not (
            isinstance(n, ast.Expr)
            and isinstance(n.value, ast.Call)
            and isinstance(n.value.func, ast.Name)
            and n.value.func.id == "check"
        )
    ]
    test = "\n".join(_source(code, n) for n in test_nodes) + "\n"
    return Exercise(
        task_id=task_id,
        prompt=prompt,
        canonical_solution="".join(lines[docstring_end:function_end]),
        test=test,
        entry_point=entry_point,
    )


# ast.parse gives every node its position; the attributes are optional only for trees built by hand.
def _end_line(node: ast.stmt) -> int:
    assert node.end_lineno is not None
    return node.end_lineno


def _source(code: str, node: ast.stmt) -> str:
    segment = ast.get_source_segment(code, node, padded=False)
    assert segment is not None
    return segment


def check_exercises(
    exercises: list[Exercise], *, timeout_s: float = 10.0, memory_mb: int = 1024, unsafe_no_sandbox: bool = False
) -> list[SandboxResult]:
    """Runs each exercise's solution against its own tests in the sandbox; results in order."""
    return run_programs(
        [e.program() for e in exercises], timeout_s=timeout_s, memory_mb=memory_mb, unsafe_no_sandbox=unsafe_no_sandbox
    )


class SolutionDeduplicator:
    """Remembers the kept exercises' solution and tests and refuses one that nearly repeats them:
    MinHash at the dedup stage's settings, so "near duplicate" means the same thing in both places.
    The first exercise checked is the one kept: the merge checks them in id order."""

    def __init__(self, params: DedupParams = DedupParams()):
        self.params = params
        self._dedup = Deduplicator(params)

    @staticmethod
    def text(solution: str, test: str) -> str:
        return f"{solution}\n{test}"

    def check(self, exercise_id: str, solution: str, test: str) -> dict[str, Any] | None:
        """None when the exercise is new (and now remembered), else the dedup stage's verdict."""
        text = self.text(solution, test)
        key, sig = exact_key(text), signature(text, self.params.num_perm, self.params.ngram)
        return self._dedup.check(exercise_id, key, sig)

    def reason(self, verdict: dict[str, Any]) -> str:
        """The failure log's reason for an exercise :meth:`check` found a near duplicate of another."""
        return (
            f"rejected: {NEAR_DUPLICATE}: solution and tests repeat {verdict['duplicate_of']} "
            f"({verdict['reason']}, Jaccard {verdict['jaccard']})"
        )


class ExerciseValidator:
    """The `process` hook for exercises: parse and run in the sandbox; keep only passing ones. Near
    duplicates are dropped when the tasks' files are merged (data_tools.synth_run), in id order, so
    that which one is kept does not depend on the task count or on which answer came first."""

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 1024, unsafe_no_sandbox: bool = False):
        self.timeout_s, self.memory_mb, self.unsafe_no_sandbox = timeout_s, memory_mb, unsafe_no_sandbox

    def __call__(self, request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
        if response.truncated:
            raise Rejected(f"truncated at max_tokens={request.max_tokens}")
        exercise = parse_exercise(response.text, request.meta["function_name"], task_id=request.id)
        (result,) = check_exercises(
            [exercise], timeout_s=self.timeout_s, memory_mb=self.memory_mb, unsafe_no_sandbox=self.unsafe_no_sandbox
        )
        if not result.passed:
            detail = f": {result.detail.strip()[-300:]}" if result.detail.strip() else ""
            raise Rejected(f"solution fails its own tests ({result.status}){detail}")
        return {**exercise.to_dict(), "meta": request.meta, "model": response.model, "usage": usage_of(response)}


NEAR_DUPLICATE = "near-duplicate exercise"
