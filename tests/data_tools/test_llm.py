import asyncio
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from data_tools.llm import ClientConfig, LLMRequest, RateLimiter, Rejected, ResultStore, RunStats, run_requests
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI, kill_once_filed

ROOT = Path(__file__).resolve().parents[2]


def scripted(plan: dict[str, list[str]]):
    """prompt -> the faults of its successive attempts; the last one repeats."""

    def fault(prompt: str, attempt: int) -> str:
        sequence = plan.get(prompt, ["ok"])
        return sequence[min(attempt, len(sequence) - 1)]

    return fault


def fast_config(server: FakeOpenAI, **overrides) -> ClientConfig:
    values = dict(
        base_url=server.base_url,
        model="fake",
        timeout_s=0.5,
        backoff_initial_s=0.02,
        backoff_max_s=0.1,
        max_attempts=4,
        max_concurrency=4,
    )
    values.update(overrides)
    return ClientConfig(**values)


def requests_for(prompts: list[str], chat: bool = True) -> list[LLMRequest]:
    if chat:
        return [LLMRequest(id=f"id-{p}", messages=[{"role": "user", "content": p}]) for p in prompts]
    return [LLMRequest(id=f"id-{p}", prompt=p) for p in prompts]


def run_prompts(tmp_path: Path, prompts: list[str], config: ClientConfig, *, chat: bool = True, **options) -> RunStats:
    """``run_requests`` over ``prompts`` into ``tmp_path``'s out.jsonl and fail.jsonl, without a progress bar."""
    return run_requests(
        requests_for(prompts, chat), tmp_path / "out.jsonl", tmp_path / "fail.jsonl", config, progress=False, **options
    )


def assert_each_id_filed_exactly_once(out: Path, failures: Path, ids: list[str]) -> tuple[list, list]:
    done, failed = read_jsonl(out), read_jsonl(failures)
    filed = [r["id"] for r in done] + [r["id"] for r in failed]
    assert sorted(filed) == sorted(ids), "every id exactly once across output and failure log"
    assert all(r["reason"] for r in failed)
    return done, failed


@pytest.mark.parametrize(
    "fault,category",
    [
        ("500", "500"),
        ("timeout", "timeout"),
        ("malformed", "malformed"),
        ("truncated", "connection"),
        ("no_choices", "malformed"),
    ],
)
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
def test_a_transient_fault_is_retried_and_the_answer_kept(tmp_path, fault, category, chat):
    with FakeOpenAI(scripted({"p": [fault, "ok"]}), hang_s=5) as server:
        stats = run_prompts(tmp_path, ["p"], fast_config(server, timeout_s=0.3), chat=chat)
        assert server.hits_by_prompt() == {"p": [fault, "ok"]}
    (record,) = read_jsonl(tmp_path / "out.jsonl")
    assert record["id"] == "id-p" and record["choices"][0]["text"] == "answer to: p"
    assert stats.succeeded == 1 and stats.failed == 0 and stats.retry_reasons == {category: 1}
    assert not read_jsonl(tmp_path / "fail.jsonl")


def test_429_waits_for_retry_after_before_the_next_attempt(tmp_path):
    with FakeOpenAI(scripted({"p": ["429", "ok"]}), retry_after="1") as server:
        stats = run_prompts(tmp_path, ["p"], fast_config(server))
        first, second = server.hits
    assert second.time - first.time >= 0.95, "Retry-After: 1 must be honoured (backoff alone is 0.02 s)"
    assert stats.succeeded == 1 and stats.retry_reasons == {"429": 1}


def test_a_client_error_is_final_and_logged_with_its_reason(tmp_path):
    with FakeOpenAI(scripted({"bad": ["400"]})) as server:
        stats = run_prompts(tmp_path, ["bad", "good"], fast_config(server))
        assert server.hits_by_prompt()["bad"] == ["400"], "a 400 is not retried"
    (failure,) = read_jsonl(tmp_path / "fail.jsonl")
    assert failure["id"] == "id-bad" and failure["attempts"] == 1
    assert "HTTP 400" in failure["reason"] and "not allowed" in failure["reason"]
    assert stats.succeeded == 1 and stats.failed == 1


def test_persistent_faults_give_up_after_max_attempts(tmp_path):
    with FakeOpenAI(scripted({"p": ["500"]})) as server:
        run_prompts(tmp_path, ["p"], fast_config(server, max_attempts=3))
        assert len(server.hits) == 3
    (failure,) = read_jsonl(tmp_path / "fail.jsonl")
    assert failure["attempts"] == 3 and failure["reason"].startswith("HTTP 500")


def test_mixed_faults_file_every_item_exactly_once_and_count_usage(tmp_path):
    faults = ["ok", "429", "500", "timeout", "malformed", "truncated", "400", "no_choices"]
    plan = {f"p{i}": [faults[i % len(faults)], faults[(i * 3) % len(faults)], "ok"] for i in range(24)}
    plan["p23"] = ["500"]  # never recovers
    prompts = list(plan)
    with FakeOpenAI(scripted(plan), retry_after="0", hang_s=5) as server:
        stats = run_prompts(
            tmp_path, prompts, fast_config(server, timeout_s=0.3, input_price_per_mtok=1e6, output_price_per_mtok=2e6)
        )
    done, failed = assert_each_id_filed_exactly_once(
        tmp_path / "out.jsonl", tmp_path / "fail.jsonl", [f"id-{p}" for p in prompts]
    )
    assert {r["id"] for r in failed} == {f"id-{p}" for p in prompts if "400" in plan[p][:2]} | {"id-p23"}
    assert stats.succeeded == len(done) and stats.failed == len(failed)
    assert {"429", "500", "timeout", "malformed", "connection"} <= set(stats.retry_reasons)
    assert stats.prompt_tokens == sum(r["usage"]["prompt_tokens"] for r in done) > 0
    assert stats.estimated_cost_usd == pytest.approx(stats.prompt_tokens + 2 * stats.completion_tokens)


def test_rerun_sends_only_unfinished_ids_and_drops_a_torn_last_line(tmp_path):
    out, fail = tmp_path / "out.jsonl", tmp_path / "fail.jsonl"
    out.write_text('{"id": "id-a", "choices": []}\n{"id": "id-b", "cho')  # killed mid-write
    fail.write_text('{"id": "id-c", "reason": "HTTP 400: no"}\n')
    with FakeOpenAI() as server:
        stats = run_prompts(tmp_path, ["a", "b", "c", "d"], fast_config(server))
        assert sorted(server.hits_by_prompt()) == ["b", "d"]
    assert (stats.already_done, stats.failed_before, stats.succeeded) == (1, 1, 2)
    assert [r["id"] for r in read_jsonl(out)] == ["id-a", "id-b", "id-d"]


def test_retry_failed_moves_recovered_items_out_of_the_failure_log(tmp_path):
    out, fail = tmp_path / "out.jsonl", tmp_path / "fail.jsonl"
    with FakeOpenAI(scripted({"a": ["400", "ok"], "b": ["400"]})) as server:
        run_prompts(tmp_path, ["a", "b"], fast_config(server))
        assert len(read_jsonl(fail)) == 2
        stats = run_prompts(tmp_path, ["a", "b"], fast_config(server), retry_failed=True)
    assert stats.succeeded == 1 and stats.failed == 1
    assert_each_id_filed_exactly_once(out, fail, ["id-a", "id-b"])
    assert [r["id"] for r in read_jsonl(fail)] == ["id-b"]


def test_a_rejected_answer_goes_to_the_failure_log_with_the_answer(tmp_path):
    def process(request, response):
        if "bad" in response.text:
            raise Rejected("not what we wanted")
        return {"text": response.text}

    with FakeOpenAI() as server:
        stats = run_prompts(tmp_path, ["bad", "fine"], fast_config(server), process=process)
    (failure,) = read_jsonl(tmp_path / "fail.jsonl")
    assert failure["reason"] == "rejected: not what we wanted" and failure["texts"] == ["answer to: bad"]
    assert read_jsonl(tmp_path / "out.jsonl") == [{"id": "id-fine", "text": "answer to: fine"}]
    assert stats.rejected == 1


def test_a_retryable_rejection_asks_again_and_files_a_failure_only_after_the_last_attempt(tmp_path):
    answers = {"fixed": iter(["garbled", "garbled", "good"]), "hopeless": iter(["garbled"] * 9)}

    def process(request, response):
        if response.text == "garbled":
            raise Rejected("not a verdict", retryable=True)
        return {"text": response.text}

    def answer(prompt):
        return next(answers[prompt])

    with FakeOpenAI(answer=answer) as server:
        stats = run_prompts(tmp_path, ["fixed", "hopeless"], fast_config(server, max_attempts=3), process=process)
        assert {p: len(h) for p, h in server.hits_by_prompt().items()} == {"fixed": 3, "hopeless": 3}
    assert read_jsonl(tmp_path / "out.jsonl") == [{"id": "id-fixed", "text": "good"}]
    (failure,) = read_jsonl(tmp_path / "fail.jsonl")
    assert failure["id"] == "id-hopeless" and failure["attempts"] == 3
    assert failure["reason"] == "rejected: not a verdict" and failure["texts"] == ["garbled"]
    assert stats.retry_reasons == {"rejected": 4} and stats.rejected == 1 and stats.succeeded == 1


def test_tokens_per_minute_budget_makes_requests_wait():
    async def scenario() -> float:
        limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600)  # 10 tokens/s
        await limiter.acquire(600)  # drains the bucket
        start = time.monotonic()
        await limiter.acquire(5)
        return time.monotonic() - start

    assert 0.4 <= asyncio.run(scenario()) <= 1.0


def test_requests_per_minute_budget_spaces_requests():
    async def scenario() -> float:
        limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None)  # 10 requests/s
        for _ in range(600):
            await limiter.acquire(1)
        start = time.monotonic()
        for _ in range(3):
            await limiter.acquire(1)
        return time.monotonic() - start

    assert 0.25 <= asyncio.run(scenario()) <= 0.6


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="exactly one of messages= or prompt="):
        LLMRequest(id="x")
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        ClientConfig(base_url="http://127.0.0.1:1/v1", max_concurrency=0).validate()
    with pytest.raises(ValueError, match="appears twice"):
        run_requests(
            requests_for(["a", "a"]),
            tmp_path / "o.jsonl",
            tmp_path / "f.jsonl",
            ClientConfig(base_url="http://127.0.0.1:1/v1", max_attempts=1, timeout_s=0.2),
            progress=False,
        )
    (tmp_path / "broken.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="broken.jsonl:1: malformed JSON"):
        ResultStore(tmp_path / "broken.jsonl", tmp_path / "f2.jsonl")


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_loses_and_duplicates_nothing(tmp_path):
    # Faults by prompt hash: some items recover after 429/500/timeouts, some are rejected for good.
    faults = ["ok", "ok", "429", "500", "timeout", "malformed", "truncated", "400"]

    def plan(prompt: str, attempt: int) -> str:
        return "ok" if attempt >= 2 else faults[(zlib.crc32(prompt.encode()) + attempt) % len(faults)]

    out, fail = tmp_path / "textbooks.jsonl", tmp_path / "textbooks.failures.jsonl"
    with FakeOpenAI(plan, delay_s=0.05, retry_after="0", hang_s=5) as server:
        command = [
            sys.executable,
            "-m",
            "data_tools.synth",
            "textbooks",
            "--count",
            "40",
            "--out",
            str(out),
            "--base-url",
            server.base_url,
            "--model",
            "fake",
            "--max-concurrency",
            "2",
            "--timeout",
            "0.3",
            "--backoff-initial",
            "0.02",
            "--backoff-max",
            "0.1",
            "--no-progress",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # the run's one task files its answers here; OUT is merged from them at the end
        task_out = tmp_path / "textbooks.tasks" / "00000-of-00001.jsonl"
        task_fail = task_out.with_name("00000-of-00001.failures.jsonl")
        kill_once_filed(command, cwd=tmp_path, env=env, files=[task_out, task_fail], records=8)
        before_kill = {r["id"]: r for r in read_jsonl(task_out)}
        hits_before = {prompt: len(f) for prompt, f in server.hits_by_prompt().items()}
        assert len(before_kill) < 40, "the kill must land mid-run"

        finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr
        hits_after = {prompt: len(f) for prompt, f in server.hits_by_prompt().items()}

    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    done, failed = read_jsonl(out), read_jsonl(fail)
    assert len(done) + len(failed) == 40 and len({r["id"] for r in done + failed}) == 40
    assert summary["already_done"] + summary["failed_before"] >= 8 and summary["requested"] == 40
    assert all(r["reason"].startswith("HTTP 400") for r in failed) and failed
    for record in before_kill.values():  # finished before the kill: never asked again
        prompt = record["text"].removeprefix("answer to: ")
        assert hits_after[prompt] == hits_before[prompt]
