"""A synthesis run split into tasks: the same ids and texts for any task count, each id asked once even
when a task is killed, and a summary whose counts are those of the files."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from data_tools.executors import ExecutorOptions
from data_tools.llm import ClientConfig
from data_tools.synth import main
from data_tools.synth_prompts import PROMPTS_DIR, load_prompt_space, prompt_index, prompt_plan, sample_prompts
from data_tools.synth_run import RunFiles, SynthConfig, merge_tasks, synthesize
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]


def fault(prompt: str, attempt: int) -> str:
    """One prompt in five is refused for good (a failure), one in five is cut at max_tokens (rejected)."""
    return ("ok", "ok", "ok", "400", "length")[zlib.crc32(prompt.encode()) % 5]


def textbook_prompts(count: int, seed: int = 0) -> list:
    plan = prompt_plan(load_prompt_space(PROMPTS_DIR / "textbooks.yaml", "textbooks"), "textbooks")
    return list(sample_prompts(plan, count, seed))


def settled_ids(path: Path) -> list[str]:
    """The ids of a task file that a kill may have left with a torn last line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    return [json.loads(line)["id"] for line in lines[:-1]]  # the text after the last newline is torn or empty


def test_each_task_files_only_its_own_ids_and_three_tasks_merge_to_the_same_bytes_as_one(tmp_path):
    prompts = textbook_prompts(20)
    outcome = Counter(fault(p.user, 0) for p in prompts)
    assert outcome["ok"] and outcome["400"] and outcome["length"]
    with FakeOpenAI(fault) as server:
        client = ClientConfig(base_url=server.base_url, model="fake", max_attempts=1)
        one = SynthConfig("textbooks", count=20, out=str(tmp_path / "one" / "t.jsonl"), client=client, no_progress=True)
        three = replace(one, out=str(tmp_path / "three" / "t.jsonl"))
        synthesize(one)
        hits_of_one = len(server.hits)
        synthesize(three, ExecutorOptions(tasks=3, workers=3))
        assert hits_of_one == 20 and len(server.hits) == 40  # every prompt asked once per run

    files = RunFiles.of(three)
    for rank in range(3):
        task_ids = settled_ids(files.task_out(rank, 3)) + settled_ids(files.task_failures(rank, 3))
        assert sorted(task_ids) == [p.id for p in prompts[rank::3]]  # prompt i goes to task i % 3

    kept, failed = read_jsonl(tmp_path / "one" / "t.jsonl"), read_jsonl(tmp_path / "one" / "t.failures.jsonl")
    assert {r["id"]: r["text"] for r in kept} == {
        p.id: f"answer to: {p.user}" for p in prompts if fault(p.user, 0) == "ok"
    }
    assert [r["id"] for r in kept] == sorted(r["id"] for r in kept)  # merged in id order
    assert {r["id"] for r in failed} == {p.id for p in prompts if fault(p.user, 0) != "ok"}
    for name in ("t.jsonl", "t.failures.jsonl"):
        assert (tmp_path / "three" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_the_summary_counts_each_task_and_the_total_from_the_files(tmp_path):
    prompts = textbook_prompts(10)
    with FakeOpenAI(fault) as server:
        client = ClientConfig(
            base_url=server.base_url,
            model="fake",
            max_attempts=1,
            input_price_per_mtok=3.0,
            output_price_per_mtok=5.0,
        )
        config = SynthConfig("textbooks", count=10, out=str(tmp_path / "t.jsonl"), client=client, no_progress=True)
        summary = synthesize(config, ExecutorOptions(tasks=3, workers=3))
    assert json.loads(RunFiles.of(config).summary.read_text()) == summary
    assert summary["tasks"] == 3 and [t["task"] for t in summary["per_task"]] == [0, 1, 2]
    for rank, task in enumerate(summary["per_task"]):
        mine = Counter(fault(p.user, 0) for p in prompts[rank::3])
        assert task["requested"] == len(prompts[rank::3]) == [4, 3, 3][rank]
        assert task["succeeded"] == mine["ok"]
        assert task["failed"] == mine["400"] + mine["length"] and task["rejected"] == mine["length"]
        # the tokens read back from the files are those the client counted as the answers came in
        run = task["last_run"]
        assert (task["prompt_tokens"], task["completion_tokens"]) == (run["prompt_tokens"], run["completion_tokens"])
        assert task["estimated_cost_usd"] == pytest.approx(
            (3.0 * task["prompt_tokens"] + 5.0 * task["completion_tokens"]) / 1e6
        )
    for key in ("requested", "succeeded", "failed", "rejected", "prompt_tokens", "completion_tokens"):
        assert summary[key] == sum(task[key] for task in summary["per_task"]), key
    assert summary["requested"] == 10 and summary["succeeded"] == len(read_jsonl(tmp_path / "t.jsonl"))
    assert summary["failed"] == len(read_jsonl(tmp_path / "t.failures.jsonl")) and summary["completion_tokens"] > 0


def test_a_larger_count_on_rerun_asks_only_the_new_ids_also_of_finished_tasks(tmp_path):
    with FakeOpenAI() as server:
        client = ClientConfig(base_url=server.base_url, model="fake")
        config = SynthConfig("textbooks", count=2, out=str(tmp_path / "t.jsonl"), client=client, no_progress=True)
        first = synthesize(config, ExecutorOptions(tasks=3, workers=1))  # fewer ids than tasks: task 2 has none
        summary = synthesize(replace(config, count=11), ExecutorOptions(tasks=3, workers=1))
        asked = Counter(hit.prompt for hit in server.hits)
    assert [t["requested"] for t in first["per_task"]] == [1, 1, 0] and first["succeeded"] == 2
    assert len(asked) == 11 and set(asked.values()) == {1}
    assert summary["succeeded"] == 11 and summary["already_done"] == 2
    assert [t["last_run"]["already_done"] for t in summary["per_task"]] == [1, 1, 0]
    assert [r["id"] for r in read_jsonl(tmp_path / "t.jsonl")] == [p.id for p in textbook_prompts(11)]


def test_a_rerun_with_another_task_count_or_over_an_output_without_task_files_is_refused(tmp_path, capsys):
    with FakeOpenAI() as server:
        argv = ["textbooks", "--count", "4", "--out", str(tmp_path / "t.jsonl"), "--base-url", server.base_url]
        assert main([*argv, "--tasks", "2", "--no-progress"]) == 0
        capsys.readouterr()
        before = (tmp_path / "t.jsonl").read_bytes()
        assert main([*argv, "--tasks", "3", "--no-progress"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {tmp_path / 't.tasks'} holds the files of a 2-task run: rerun with --tasks 2 (which task asks "
            "for an id depends on the task count), or move that directory away to start afresh"
        )
        (tmp_path / "t.tasks").rename(tmp_path / "elsewhere")
        assert main([*argv, "--tasks", "2", "--no-progress"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {tmp_path / 't.jsonl'} exists but {tmp_path / 't.tasks'}")
        assert len(server.hits) == 4 and (tmp_path / "t.jsonl").read_bytes() == before


def holder_of(path: Path, session: int) -> int | None:
    """The process of ``session`` that has ``path`` open (the task writing it), if any."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        pid = int(fd_dir.parent.name)
        try:
            if os.getsid(pid) != session:
                continue
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                return pid
        except OSError:  # gone, or not ours to look at
            continue
    return None


@pytest.mark.slow
def test_sigkill_of_one_task_then_rerun_asks_each_id_once(tmp_path):
    count, tasks, concurrency = 45, 3, 2
    prompts = textbook_prompts(count)
    out = tmp_path / "t.jsonl"
    files = RunFiles(out, tmp_path / "t.failures.jsonl")
    victim_out, victim_failures = files.task_out(1, tasks), files.task_failures(1, tasks)
    with FakeOpenAI(fault, delay_s=0.2) as server:  # a task takes 15 x 0.2 s / 2 at least: time to kill it
        command = [
            sys.executable,
            "-m",
            "data_tools.synth",
            "textbooks",
            "--count",
            str(count),
            "--out",
            str(out),
            "--base-url",
            server.base_url,
            "--model",
            "fake",
            "--max-attempts",
            "1",
            "--max-concurrency",
            str(concurrency),
            "--tasks",
            str(tasks),
            "--workers",
            str(tasks),
            "--no-progress",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        run = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while len(settled_ids(victim_out)) + len(settled_ids(victim_failures)) < 3:
                assert run.poll() is None and time.monotonic() < deadline, run.stderr.read().decode()
                time.sleep(0.01)
            victim = holder_of(victim_out, run.pid)
            assert victim is not None and victim != run.pid
            os.kill(victim, signal.SIGKILL)
            filed_before_kill = set(settled_ids(victim_out) + settled_ids(victim_failures))
            assert len(filed_before_kill) < len(prompts[1::tasks]), "the kill must land mid-task"
            # the other tasks finish; the run waits for the killed one for ever, as a job array's
            # dependent job does: stop it, as its user would
            completions = Path(f"{files.prefix}.datatrove/generate/completions")
            while not all((completions / f"{rank:05d}").exists() for rank in (0, 2)):
                assert time.monotonic() < deadline, "the other tasks did not finish"
                time.sleep(0.05)
            assert not (completions / "00001").exists() and not out.exists()
        finally:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        asked = Counter(hit.prompt for hit in server.hits)

    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    filed = read_jsonl(out) + read_jsonl(files.failures)
    assert sorted(r["id"] for r in filed) == [p.id for p in prompts]  # every id filed exactly once
    by_id = {p.id: p for p in prompts}
    asked_twice = {p.id for p in prompts if asked[p.user] == 2}
    assert all(asked[p.user] in (1, 2) for p in prompts)
    # only what the killed task had in flight, unanswered, is asked again; nothing it had filed
    assert len(asked_twice) <= concurrency
    assert all(prompt_index(i) % tasks == 1 and i not in filed_before_kill for i in asked_twice)
    assert all(asked[by_id[i].user] == 1 for i in filed_before_kill)
    assert sum(asked.values()) == count + len(asked_twice)
    # the rerun asked nothing of the tasks that had finished
    assert [t["last_run"]["already_done"] + t["last_run"]["failed_before"] for t in summary["per_task"]] == [
        15,
        len(filed_before_kill),
        15,
    ]
    assert summary["succeeded"] + summary["failed"] == count
    assert summary["succeeded"] == sum(fault(p.user, 0) == "ok" for p in prompts)


def test_help_says_the_endpoint_budgets_apply_per_task(capsys):
    with pytest.raises(SystemExit):
        main(["textbooks", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-concurrency", "--requests-per-minute", "--tokens-per-minute"):
        assert re.search(re.escape(flag) + r" \S+ .*?per task: N tasks ask up to N times this", help_text), flag
    assert "--tasks" in help_text and "--executor" in help_text


def test_a_task_failing_on_a_rerun_stops_the_run_before_the_merge_despite_its_earlier_completion(tmp_path, capsys):
    with FakeOpenAI() as server:
        argv = ["textbooks", "--count", "6", "--out", str(tmp_path / "t.jsonl"), "--base-url", server.base_url]
        argv += ["--tasks", "2", "--workers", "1", "--no-progress"]
        assert main(argv) == 0
        summary = (tmp_path / "t.summary.json").read_bytes()
        shard = RunFiles(tmp_path / "t.jsonl", tmp_path / "t.failures.jsonl").task_out(1, 2)
        lines = shard.read_text().splitlines(keepends=True)
        shard.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))  # damaged in the middle: task 1 stops
        assert main(argv) == 2
    assert f"{shard}:2" in capsys.readouterr().err
    assert (tmp_path / "t.summary.json").read_bytes() == summary  # no summary of half the files


def test_a_torn_task_line_stops_the_merge_naming_the_file_and_line_and_the_rerun(tmp_path):
    with FakeOpenAI(fault) as server:
        client = ClientConfig(base_url=server.base_url, model="fake", max_attempts=1)
        config = SynthConfig("textbooks", count=6, out=str(tmp_path / "t.jsonl"), client=client, no_progress=True)
        synthesize(config, ExecutorOptions(tasks=2, workers=2))
    task_file = RunFiles.of(config).task_out(0, 2)
    lines = len(task_file.read_bytes().splitlines())
    with open(task_file, "ab") as f:
        f.write(b'{"id": "textbooks-0000')  # what a kill mid-write leaves
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(task_file))}:{lines + 1}: malformed JSON .*rerun the command"
    ):
        merge_tasks(config, 2)
