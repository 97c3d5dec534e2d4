"""The graded problem set: well formed, each reference passes its hidden tests in the sandbox, each
`pass` body fails them, and no problem shares a 13-gram with HumanEval or MBPP."""

import ast
import doctest

import pytest

from data_tools.decontaminate import load_benchmark_items, word_ngrams
from megaphi.eval.benchmarks import load_benchmark
from megaphi.eval.graded.problems import PROBLEMS_DIR, ProblemFileError, load_graded, load_problems, parse_problem
from megaphi.eval.score import score_samples
from tests.megaphi.eval.test_benchmarks import MBPP_PATH

PROBLEMS = load_problems()
MIN_PROBLEMS = 50  # the paper's count


def test_the_set_holds_at_least_fifty_well_formed_problems():
    assert len(PROBLEMS) >= MIN_PROBLEMS
    assert len({p.entry_point for p in PROBLEMS}) == len(PROBLEMS)
    for problem in PROBLEMS:
        tree = ast.parse(problem.prompt + problem.reference)  # the prompt and its reference are one program
        (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        assert function.name == problem.entry_point and ast.get_docstring(function), problem.task_id
        assert problem.prompt.rstrip().endswith('"""'), f"{problem.task_id}: the prompt ends with its docstring"
        assert problem.tests.count("assert ") >= 4, f"{problem.task_id}: too few hidden tests"


def test_the_benchmark_continues_prompts_like_humaneval_and_runs_the_check_on_the_entry_point():
    benchmark = load_benchmark("graded")
    assert benchmark.stop == load_benchmark("humaneval").stop
    first = benchmark.problems[0]
    assert first.task_id == "Graded/" + PROBLEMS[0].entry_point
    assert (
        first.program("X") == PROBLEMS[0].prompt + "X\n" + PROBLEMS[0].tests + f"\ncheck({PROBLEMS[0].entry_point})\n"
    )


def test_every_reference_passes_its_hidden_tests_and_every_pass_body_fails_them():
    benchmark = load_graded()
    samples = [{"task_id": p.task_id, "completion": p.reference} for p in benchmark.problems]
    samples += [{"task_id": p.task_id, "completion": "    pass\n"} for p in benchmark.problems]
    results = score_samples(benchmark, samples, timeout_s=20.0)
    n = len(benchmark.problems)
    assert [r["task_id"] for r in results[:n] if not r["passed"]] == [], "references that fail"
    assert [r["task_id"] for r in results[n:] if r["passed"]] == [], "`pass` bodies that pass"


def test_every_prompt_shows_examples_and_its_reference_agrees_with_them():
    """The model sees the docstring's examples; a wrong example would grade models against a wrong problem."""
    for problem in PROBLEMS:
        namespace = {}
        exec(compile(problem.prompt + problem.reference, problem.task_id, "exec"), namespace)  # our own code
        (test,) = doctest.DocTestFinder().find(namespace[problem.entry_point], problem.entry_point, globs=namespace)
        result = doctest.DocTestRunner().run(test, out=lambda text: None)
        assert result.attempted > 0 and result.failed == 0, f"{problem.task_id}: {result}"


def test_no_problem_shares_a_13_gram_with_humaneval_or_mbpp():
    benchmarks = ["humaneval"] + (["mbpp"] if MBPP_PATH.is_file() else [])
    grams = {}
    for item in load_benchmark_items(benchmarks, str(MBPP_PATH)):
        for gram in word_ngrams(item.text, 13):
            grams.setdefault(gram, item.task_id)
    overlaps = {
        p.task_id: sorted({grams[g] for g in word_ngrams(p.prompt + p.reference, 13) if g in grams}) for p in PROBLEMS
    }
    assert {task: hits for task, hits in overlaps.items() if hits} == {}


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.replace("# elevator_route", "# lift"), "the first line must be '# elevator_route'"),
        (
            lambda t: t.replace("## Grading notes", "## Notes"),
            "sections must be Prompt, Reference, Tests, Grading notes",
        ),
        (
            lambda t: t.replace("## Tests\n```python", "## Tests\n```"),
            "section Tests must hold exactly one ```python block",
        ),
        (lambda t: t.split("## Grading notes")[0] + "## Grading notes\n\n", "the grading notes are empty"),
        (lambda t: t.replace("def check(candidate):", "def check(f):"), r"must start with `def check\(candidate\):`"),
    ],
)
def test_a_malformed_problem_file_is_refused_naming_the_file_and_the_fault(tmp_path, edit, message):
    path = tmp_path / "elevator_route.md"
    path.write_text(edit((PROBLEMS_DIR / "elevator_route.md").read_text()))
    with pytest.raises(ProblemFileError, match=message) as error:
        parse_problem(path)
    assert str(path) in str(error.value)
