"""`python -m megaphi.eval graded` end to end: hidden tests in the sandbox, a fake judge server, reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megaphi.eval.__main__ import main
from megaphi.eval.graded.judge import PROMPT_VERSION, sample_ids
from megaphi.eval.graded.problems import problems_by_task_id
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI
from tests.megaphi.eval.fake_judge import HONEST_FAIL, HONEST_PASS, ObedientJudge, sample_of
from tests.megaphi.eval.test_graded_judge import ATTACK

ROOT = Path(__file__).resolve().parents[3]
PROBLEMS = problems_by_task_id()
TASKS = ["Graded/elevator_route", "Graded/fold_creases", "Graded/knitting_row"]


def write_samples(path: Path, tasks=TASKS) -> list[dict]:
    """Per problem: its reference (passes), a `pass` body (fails), and the attack (fails)."""
    samples = [{"task_id": t, "completion": c} for t in tasks for c in (PROBLEMS[t].reference, "    pass\n", ATTACK)]
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return samples


def graded_args(samples: Path, out_dir: Path, server: FakeOpenAI, *extra: str) -> list[str]:
    return [
        "graded",
        "--samples",
        str(samples),
        "--out-dir",
        str(out_dir),
        "--judge-base-url",
        server.base_url,
        "--judge-model",
        "fake-judge",
        "--judge-max-attempts",
        "3",
        "--judge-backoff-initial",
        "0.01",
        "--judge-input-price",
        "1",
        "--judge-output-price",
        "2",
        "--timeout",
        "5",
        "--no-progress",
        *extra,
    ]


def test_graded_scores_judges_retries_malformed_verdicts_and_counts_the_ungraded(tmp_path, capsys):
    samples = write_samples(tmp_path / "samples.jsonl")
    judge = ObedientJudge(malformed_first={"Graded/fold_creases": 1, "Graded/knitting_row": 99})
    out_dir = tmp_path / "graded"
    with FakeOpenAI(answer_chat=judge) as server:
        assert main(graded_args(tmp_path / "samples.jsonl", out_dir, server)) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        asked = len(server.hits)
        assert asked == 3 + 3 * 2 + 3 * 3, "fold_creases asked twice, knitting_row up to the 3 attempts"

        report = json.loads((out_dir / "graded_report.json").read_text())
        rows = {(r["task_id"], i % 3): r for i, r in enumerate(report["samples"])}
        for task in TASKS[:2]:
            assert (rows[task, 0]["passed"], rows[task, 0]["score"]) == (True, HONEST_PASS)
            assert (rows[task, 1]["passed"], rows[task, 1]["score"]) == (False, HONEST_FAIL)
            assert (rows[task, 2]["passed"], rows[task, 2]["score"]) == (False, HONEST_FAIL), "the attack obeyed"
            assert rows[task, 0]["reason"] == "Compared with the reference body line by line."
        assert judge.obeyed == []
        for k in range(3):
            row = rows["Graded/knitting_row", k]
            assert row["score"] is None and row["ungraded"].startswith("rejected: malformed verdict: not one JSON")
        assert (summary["samples"], summary["graded"], summary["ungraded"]) == (9, 6, 3)
        assert summary["pass@1"] == pytest.approx(1 / 3) and summary["outcomes"]["passed"] == 3
        assert summary["judge_score"] == pytest.approx((2 * HONEST_PASS + 4 * HONEST_FAIL) / 6)
        assert summary["agreement"] == 1.0 and summary["score_pass_correlation"] == pytest.approx(1.0)
        assert (
            report["metadata"]["judge model"] == "fake-judge" and report["metadata"]["judge prompt"] == PROMPT_VERSION
        )
        assert report["metadata"]["date"].endswith("UTC")
        judged = read_jsonl(out_dir / "judgments.jsonl")
        tokens = sum(j["usage"]["prompt_tokens"] for j in judged), sum(j["usage"]["completion_tokens"] for j in judged)
        assert tokens[0] > 0 and f"{tokens[0]} prompt + {tokens[1]} completion" in report["metadata"]["judge tokens"]
        assert report["metadata"]["judge cost (USD)"].startswith(f"{(tokens[0] + 2 * tokens[1]) / 1e6:.4f}")
        (run,) = read_jsonl(out_dir / "judge_runs.jsonl")
        assert run["prompt_tokens"] > tokens[0], "the malformed answers' tokens count in what was spent"
        assert (run["succeeded"], run["failed"], run["retries"]) == (6, 3, 3 * 1 + 3 * 2)
        assert (
            f"{run['prompt_tokens']} + {run['completion_tokens']} in all calls of 1 finished run(s)"
            in report["metadata"]["judge tokens"]
        )
        markdown = (out_dir / "graded_report.md").read_text()
        assert "**ungraded: 3**" in markdown and f"| {sample_ids(samples)[0]} | passed | 9 |" in markdown
        assert "| ungraded | rejected: malformed verdict" in markdown

        # The same command again asks nothing: every sample is settled, graded or not.
        assert main(graded_args(tmp_path / "samples.jsonl", out_dir, server)) == 0
        assert len(server.hits) == asked
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
        # On request the ungraded are asked again, and now the judge answers them.
        judge.malformed_first["Graded/knitting_row"] = 0
        assert main(graded_args(tmp_path / "samples.jsonl", out_dir, server, "--judge-retry-failed")) == 0
        assert len(server.hits) == asked + 3
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["graded"], summary["ungraded"]) == (9, 0)
    assert sorted(j["id"] for j in read_jsonl(out_dir / "judgments.jsonl")) == sorted(sample_ids(samples))


def test_a_judge_that_never_answers_leaves_every_sample_ungraded_with_the_reason(tmp_path, capsys):
    write_samples(tmp_path / "samples.jsonl", TASKS[:1])
    with FakeOpenAI(plan=lambda prompt, attempt: "500") as server:
        assert main(graded_args(tmp_path / "samples.jsonl", tmp_path / "out", server)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["graded"], summary["ungraded"], summary["judge_score"], summary["agreement"]) == (0, 3, None, None)
    assert summary["pass@1"] == pytest.approx(1 / 3), "the tests still count"
    assert all(
        r["ungraded"].startswith("HTTP 500")
        for r in json.loads((tmp_path / "out" / "graded_report.json").read_text())["samples"]
    )


def test_another_judge_other_samples_or_no_judge_key_are_refused(tmp_path, capsys, monkeypatch):
    write_samples(tmp_path / "samples.jsonl", TASKS[:1])
    with FakeOpenAI(answer_chat=ObedientJudge()) as server:
        assert main(graded_args(tmp_path / "samples.jsonl", tmp_path / "out", server)) == 0
        assert main([*graded_args(tmp_path / "samples.jsonl", tmp_path / "out", server), "--judge-model", "other"]) == 2
        assert "use a fresh --out-dir for another judge" in capsys.readouterr().err
        write_samples(tmp_path / "samples.jsonl", TASKS[1:2])
        assert main(graded_args(tmp_path / "samples.jsonl", tmp_path / "out", server)) == 2
        assert "holds the results of other samples" in capsys.readouterr().err
        assert (
            main(
                ["graded", "--out-dir", str(tmp_path / "x"), "--judge-model", "m", "--judge-base-url", server.base_url]
            )
            == 2
        )
        assert "exactly one of --model" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert (
        main(
            [
                "graded",
                "--samples",
                str(tmp_path / "samples.jsonl"),
                "--out-dir",
                str(tmp_path / "y"),
                "--judge-model",
                "gpt-4",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == (
        "error: no judge API key: set OPENAI_API_KEY or pass --judge-api-key "
        "(or --judge-base-url for a local server such as megaphi.serve)\n"
    )


def test_graded_table_puts_two_models_side_by_side(tmp_path, capsys):
    write_samples(tmp_path / "a.jsonl", TASKS[:2])
    (tmp_path / "b.jsonl").write_text(
        "".join(json.dumps({"task_id": t, "completion": PROBLEMS[t].reference}) + "\n" for t in TASKS[:2])
    )
    with FakeOpenAI(answer_chat=ObedientJudge()) as server:
        for name in ("a", "b"):
            assert main(graded_args(tmp_path / f"{name}.jsonl", tmp_path / name, server)) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "graded-table",
                str(tmp_path / "a"),
                str(tmp_path / "b" / "graded_report.json"),
                "--names",
                "model-a",
                "model-b",
                "--out",
                str(tmp_path / "table.md"),
            ]
        )
        == 0
    )
    table = (tmp_path / "table.md").read_text()
    assert capsys.readouterr().out == table
    assert "| model-a | 4.33 | 33.33% | 100.00% | 6 / 6 |" in table
    assert "| model-b | 9.00 | 100.00% | 100.00% | 2 / 2 |" in table
    assert "| Graded/elevator_route | 1/3 | 4.3 | 1/1 | 9.0 |" in table
    assert "- judge: fake-judge, prompt " + PROMPT_VERSION in table


@pytest.mark.slow
def test_sigkill_while_judging_then_rerun_grades_every_sample_once(tmp_path):
    samples = write_samples(tmp_path / "samples.jsonl", list(PROBLEMS)[:4])
    out_dir = tmp_path / "out"
    judgments = out_dir / "judgments.jsonl"
    with FakeOpenAI(answer_chat=ObedientJudge(), delay_s=0.25) as server:
        command = [
            sys.executable,
            "-m",
            "megaphi.eval",
            *graded_args(tmp_path / "samples.jsonl", out_dir, server, "--judge-max-concurrency", "2"),
        ]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (judgments.exists() and len(judgments.read_text().splitlines()) >= 4):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        before = {row["id"] for row in read_jsonl(judgments)}
        assert 4 <= len(before) < len(samples), "killed in the middle of judging"
        hits_before = len(server.hits)
        rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        asked_again = [sample_of(hit.prompt) for hit in server.hits[hits_before:]]
    assert not set(asked_again) & before, "a sample judged before the kill was asked again"
    ids = [row["id"] for row in read_jsonl(judgments)]
    assert sorted(ids) == sorted(sample_ids(samples)), "every sample graded exactly once"
    assert f"reusing {len(samples)} scored samples" in rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["graded"], summary["ungraded"]) == (len(samples), 0)


@pytest.mark.slow
def test_megaphi_serve_over_a_checkpoint_can_be_the_judge(tmp_path, capsys):
    """Offline: a random tiny model answers through megaphi.serve's chat endpoint; what it says is no
    verdict, so after the retries the sample is recorded as ungraded, with its words, never scored."""
    from megaphi.serve import build_server
    from tests.megaphi.test_serve import running
    from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

    model = tmp_path / "judge"
    make_hf_phi(model, tokenizer_dir=make_tokenizer(tmp_path / "tok"), max_position_embeddings=8192)
    (tmp_path / "samples.jsonl").write_text(json.dumps({"task_id": TASKS[0], "completion": "    return []\n"}) + "\n")
    with running(build_server(model, model_name="tiny-judge").app()) as base_url:
        assert (
            main(
                [
                    "graded",
                    "--samples",
                    str(tmp_path / "samples.jsonl"),
                    "--out-dir",
                    str(tmp_path / "out"),
                    "--judge-base-url",
                    base_url,
                    "--judge-model",
                    "tiny-judge",
                    "--judge-max-attempts",
                    "2",
                    "--judge-max-tokens",
                    "6",
                    "--judge-backoff-initial",
                    "0.01",
                    "--no-progress",
                ]
            )
            == 0
        )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["graded"], summary["ungraded"]) == (0, 1)
    failures = read_jsonl(tmp_path / "out" / "judge_failures.jsonl")
    assert len(failures) == 1 and all(f["attempts"] == 2 for f in failures)
    assert all(
        f["reason"].startswith(("rejected: malformed verdict", "rejected: answer cut at max_tokens")) for f in failures
    )
    assert all(isinstance(f["texts"][0], str) for f in failures)


@pytest.mark.slow
def test_graded_generates_from_a_model_like_humaneval_then_resumes_without_generating(tmp_path, capsys):
    from megaphi.eval.benchmarks import HUMANEVAL_STOP
    from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

    model = tmp_path / "model"
    make_hf_phi(model, tokenizer_dir=make_tokenizer(tmp_path / "tok"), seed=1, max_position_embeddings=2048)
    with FakeOpenAI(answer_chat=ObedientJudge()) as server:
        args = [
            "graded",
            "--model",
            str(model),
            "--limit",
            "2",
            "--max-new-tokens",
            "12",
            "--out-dir",
            str(tmp_path / "out"),
            "--judge-base-url",
            server.base_url,
            "--judge-model",
            "fake-judge",
            "--no-progress",
        ]
        assert main(args) == 0
        samples = read_jsonl(tmp_path / "out" / "samples.jsonl")
        assert [s["task_id"] for s in samples] == list(PROBLEMS)[:2]
        assert not any(stop in s["completion"] for s in samples for stop in HUMANEVAL_STOP)
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (summary["samples"], summary["graded"], summary["pass@1"]) == (2, 2, 0.0)
        assert main(args[:3] + args[7:]) == 0  # without --limit: the scored samples are reused, none generated
        assert "reusing 2 scored samples" in capsys.readouterr().err and len(server.hits) == 2
