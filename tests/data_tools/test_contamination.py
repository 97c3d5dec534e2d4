import sysconfig
from pathlib import Path

import pytest

from data_tools.contamination import (
    DecontaminationError,
    ast_match_rate,
    ast_node_types,
    ast_units,
    load_benchmark_items,
    word_ngrams,
)
from data_tools.decontaminate import DecontaminateConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MBPP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mbpp" / "mbpp.jsonl"


def test_ast_match_rate_ignores_names_and_finds_a_problem_inside_a_larger_file():
    problem = ast_node_types('def f(xs: list) -> int:\n    """Doc."""\n    return sorted(xs)[0]\n')
    renamed = ast_units("def smallest(items):\n    return sorted(items)[0]\n")
    inside = ast_units(
        "import os\n\nX = 1\n\ndef g(a):\n    return sorted(a)[0]\n\nprint(g([3, 1]))\n"
        "class B:\n    def h(self):\n        return [i * 2 for i in range(10) if i % 3]\n"
    )
    other = ast_units("class A:\n    pass\n")
    assert ast_match_rate(problem, renamed) == 1.0
    assert ast_match_rate(problem, inside) == 1.0
    assert ast_match_rate(problem, other) < 0.5
    assert ast_node_types("def broken(:\n") is None and ast_units("def broken(:\n") is None
    assert ast_match_rate(problem, None) == 0.0


def test_word_ngrams_are_case_insensitive_word_windows():
    assert word_ngrams("A b c d", 3) == {("a", "b", "c"), ("b", "c", "d")}
    assert word_ngrams("too short", 13) == set()


@pytest.mark.skipif(not MBPP.exists(), reason="MBPP data not present")
def test_mbpp_test_split_problems_are_loaded_from_a_path():
    items = load_benchmark_items(["mbpp"], str(MBPP))
    assert len(items) == 500 and items[0].task_id == "Mbpp/11"
    assert all(ast_node_types(i.code) is not None for i in items[:50])
    assert [i.task_id for i in load_benchmark_items(["mbpp"], str(MBPP), ["Mbpp/20", "Mbpp/11"])] == [
        "Mbpp/11",
        "Mbpp/20",
    ]


def test_unrelated_library_code_does_not_look_like_a_humaneval_solution_of_some_size():
    units = ast_units((STDLIB / "textwrap.py").read_text())
    problems = [ast_node_types(i.code) for i in load_benchmark_items(["humaneval"])]
    rates = [ast_match_rate(p, units) for p in problems if len(p) >= DecontaminateConfig().min_ast_nodes]
    assert len(rates) > 100 and max(rates) < 0.8


def test_problems_can_be_narrowed_to_named_task_ids():
    assert [i.task_id for i in load_benchmark_items(["humaneval"], problems=["HumanEval/2", "HumanEval/0"])] == [
        "HumanEval/0",
        "HumanEval/2",
    ]
    with pytest.raises(DecontaminationError, match="unknown benchmark"):
        load_benchmark_items(["apps"])
    with pytest.raises(DecontaminationError, match="'HumanEval/999' is not a problem of humaneval"):
        load_benchmark_items(["humaneval"], problems=["HumanEval/999"])
