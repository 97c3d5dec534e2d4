import pytest

from megaphi.eval.benchmarks import load_humaneval
from megaphi.eval.score import read_samples, score_samples, summarize, write_jsonl


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_scoring_gives_one_result_per_sample_in_order_with_the_error_line(humaneval):
    first, second = humaneval.problems[0], humaneval.problems[1]
    samples = [
        {"task_id": first.task_id, "completion": first.reference},
        {"task_id": first.task_id, "completion": "    return False\n"},
        {"task_id": second.task_id, "completion": "    import os\n    os._exit(0)\n"},
        {"task_id": second.task_id, "completion": second.reference},
    ]
    results = score_samples(humaneval, samples, timeout_s=5.0)
    assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
    assert [r["completion"] for r in results] == [s["completion"] for s in samples]
    assert [r["passed"] for r in results] == [True, False, False, True]
    assert results[1]["result"] == "failed: AssertionError: "
    assert results[2]["result"] == "failed: the candidate program exited with status 0 before the end of the program"

    summary = summarize(humaneval, results)
    assert summary["pass@1"] == pytest.approx(0.5)
    assert "pass@10" not in summary
    assert (summary["problems_scored"], summary["problems_in_benchmark"], summary["samples"]) == (2, 164, 4)
    assert summary["outcomes"] == {"passed": 2, "failed": 2, "timed out": 0, "killed for memory": 0}


def test_an_unknown_task_id_is_rejected_before_anything_runs(humaneval):
    with pytest.raises(ValueError, match="'HumanEval/999' is not a humaneval problem"):
        score_samples(
            humaneval, [{"task_id": "HumanEval/0", "completion": "x"}, {"task_id": "HumanEval/999", "completion": "x"}]
        )


def test_samples_round_trip_through_jsonl(tmp_path):
    rows = [{"task_id": "HumanEval/0", "completion": "    return 1\n"}, {"task_id": 11, "completion": ""}]
    write_jsonl(tmp_path / "deep" / "samples.jsonl", rows)
    assert read_samples(tmp_path / "deep" / "samples.jsonl") == rows


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n', r"samples.jsonl:2: malformed JSON"),
        ('{"task_id": "HumanEval/0"}\n', r"samples.jsonl:1 needs a \"task_id\" and a string \"completion\""),
        ('{"completion": "x"}\n', r"samples.jsonl:1 needs"),
        ("\n", "holds no samples"),
    ],
)
def test_malformed_samples_are_named_by_file_and_line(tmp_path, content, message):
    path = tmp_path / "samples.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_samples(path)


def test_a_missing_samples_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.jsonl does not exist"):
        read_samples(tmp_path / "nope.jsonl")
