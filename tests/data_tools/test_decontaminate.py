import json
import sysconfig
from pathlib import Path

import pytest

from data_tools.decontaminate import (
    DecontaminationError,
    DecontaminationParams,
    ast_match_rate,
    ast_node_types,
    ast_units,
    decontaminate,
    load_benchmark_items,
    word_ngrams,
)
from megaphi.eval.benchmarks import load_humaneval
from tests.conftest import read_jsonl

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MBPP = Path(__file__).resolve().parents[3] / "shared" / "data" / "mbpp" / "mbpp.jsonl"

# HumanEval/0's canonical solution with every name changed and the docstring gone: no 13-gram in
# common with the problem, but the same program shape.
RENAMED_HUMANEVAL_0 = """
def close_pair_exists(values, limit):
    for a, first in enumerate(values):
        for b, second in enumerate(values):
            if a != b:
                gap = abs(first - second)
                if gap < limit:
                    return True

    return False
"""


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


def test_contaminated_items_are_removed_and_every_problem_is_reported(tmp_path):
    humaneval = load_humaneval().problems
    clean = [
        {"text": (STDLIB / name).read_text()[:4000], "path": name}
        for name in ("textwrap.py", "colorsys.py", "bisect.py", "shlex.py", "fnmatch.py", "glob.py")
    ]
    copied_prompt = {"text": "# a tutorial\n" + humaneval[2].prompt, "path": "copied-prompt"}
    renamed = {"text": RENAMED_HUMANEVAL_0, "path": "renamed-solution"}
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean + [copied_prompt, renamed]))
    items = [
        i for i in load_benchmark_items(["humaneval"]) if i.task_id in {"HumanEval/0", "HumanEval/2", "HumanEval/10"}
    ]

    result = decontaminate([tmp_path / "in.jsonl"], tmp_path / "out", items, DecontaminationParams(top_k=3))

    kept = [r["path"] for r in read_jsonl(tmp_path / "out-00000.jsonl")]
    assert kept == [r["path"] for r in clean]
    removed = {r["id"]: r for r in read_jsonl(tmp_path / "out.removed.jsonl")}
    assert removed["copied-prompt"]["reason"] == "13-gram overlap"
    assert removed["copied-prompt"]["task_id"] == "HumanEval/2"
    assert removed["renamed-solution"]["reason"] == "ast match"
    assert removed["renamed-solution"]["task_id"] == "HumanEval/0"
    assert (result.removed_ngram, result.removed_ast, result.kept) == (1, 1, len(clean))

    report = json.loads((tmp_path / "out.decontamination.json").read_text())
    by_task = {p["task_id"]: p for p in report["problems"]}
    assert set(by_task) == {"HumanEval/0", "HumanEval/2", "HumanEval/10"}
    zero = by_task["HumanEval/0"]
    assert zero["closest"][0]["id"] == "renamed-solution"  # nearest by embedding too
    assert zero["closest"] == sorted(zero["closest"], key=lambda c: c["l2_distance"])
    assert all({"l2_distance", "ast_match_rate"} <= c.keys() for c in zero["closest"])
    assert zero["similar_at"] == {"0.95": True, "0.9": True, "0.85": True, "0.8": True}
    assert report["similar_problems"]["0.95"] >= 1


@pytest.mark.skipif(not MBPP.exists(), reason="MBPP data not present")
def test_mbpp_test_split_problems_are_loaded_from_a_path():
    items = load_benchmark_items(["mbpp"], str(MBPP))
    assert len(items) == 500 and items[0].task_id == "Mbpp/11"
    assert all(ast_node_types(i.code) is not None for i in items[:50])


def test_bad_inputs_give_one_clear_error(tmp_path):
    items = load_benchmark_items(["humaneval"])[:1]
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DecontaminationError, match="hold no records"):
        decontaminate([tmp_path / "empty.jsonl"], tmp_path / "o", items, embedder=object())
    with pytest.raises(DecontaminationError, match="thresholds"):
        decontaminate([tmp_path / "empty.jsonl"], tmp_path / "o", items, DecontaminationParams(ast_threshold=0))
    with pytest.raises(DecontaminationError, match="unknown benchmark"):
        load_benchmark_items(["apps"])


def test_unrelated_library_code_does_not_look_like_a_humaneval_solution_of_some_size():
    units = ast_units((STDLIB / "textwrap.py").read_text())
    problems = [ast_node_types(i.code) for i in load_benchmark_items(["humaneval"])]
    rates = [ast_match_rate(p, units) for p in problems if len(p) >= DecontaminationParams().min_ast_nodes]
    assert len(rates) > 100 and max(rates) < 0.8
