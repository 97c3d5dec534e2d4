import json

from megaphi.eval.report import per_problem, render_markdown, write_report

RESULTS = [
    {"task_id": "HumanEval/1", "completion": "a", "passed": True, "result": "passed"},
    {"task_id": "HumanEval/0", "completion": "b", "passed": False, "result": "failed: AssertionError: | pipes"},
    {"task_id": "HumanEval/1", "completion": "c", "passed": False, "result": "timed out"},
    {"task_id": "HumanEval/0", "completion": "d", "passed": False, "result": "killed for memory"},
]
SUMMARY = {
    "benchmark": "humaneval",
    "problems_scored": 2,
    "problems_in_benchmark": 164,
    "samples": 4,
    "pass@1": 0.25,
    "outcomes": {"passed": 1, "failed": 1, "timed out": 1, "killed for memory": 1},
}


def test_per_problem_rows_count_samples_and_keep_the_first_failure():
    rows = per_problem(RESULTS)
    assert rows == [
        {"task_id": "HumanEval/1", "samples": 2, "correct": 1, "first_failure": "timed out", "pass@1": 0.5},
        {
            "task_id": "HumanEval/0",
            "samples": 2,
            "correct": 0,
            "first_failure": "failed: AssertionError: | pipes",
            "pass@1": 0.0,
        },
    ]


def test_the_markdown_report_shows_pass_at_k_and_one_escaped_row_per_problem():
    text = render_markdown(SUMMARY, per_problem(RESULTS), {"model": "runs/x"})
    assert "# humaneval evaluation" in text and "- model: runs/x" in text
    assert "**pass@1: 25.00%**" in text
    assert "| HumanEval/0 | 2 | 0 | 0.000 | failed: AssertionError: \\| pipes |" in text
    assert text.count("| HumanEval/") == 2


def test_write_report_writes_json_and_markdown(tmp_path):
    json_path, md_path = write_report(tmp_path / "out", SUMMARY, RESULTS, {"model": "m"})
    report = json.loads(json_path.read_text())
    assert report["summary"] == SUMMARY and report["metadata"] == {"model": "m"}
    assert [p["task_id"] for p in report["problems"]] == ["HumanEval/1", "HumanEval/0"]
    assert md_path.read_text().startswith("# humaneval evaluation")
