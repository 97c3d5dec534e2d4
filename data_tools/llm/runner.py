"""The run: a pool of workers that sends every request not yet settled, with budgets and retries,
and files each one exactly once (see data_tools.llm)."""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
from collections import Counter
from collections.abc import Sized
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Iterable, cast

import openai

from data_tools.llm.attempt import AttemptError, attempt_once, classify_error
from data_tools.llm.config import ClientConfig
from data_tools.llm.rate_limit import RateLimiter
from data_tools.llm.request import LLMRequest, LLMResponse, Rejected, usage_of
from data_tools.llm.store import ResultStore
from megaphi.common.errors import UserError


@dataclass
class RunStats:
    requested: int = 0
    already_done: int = 0  # found in the output of an earlier run and skipped
    failed_before: int = 0  # found in the failure log of an earlier run and skipped (see retry_failed)
    succeeded: int = 0
    failed: int = 0  # API errors after the last attempt, and rejections
    rejected: int = 0
    retries: int = 0
    retry_reasons: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost_usd: float = 0.0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["retry_reasons"] = dict(self.retry_reasons)
        out["estimated_cost_usd"] = round(self.estimated_cost_usd, 6)
        out["elapsed_s"] = round(self.elapsed_s, 3)
        return out


Process = Callable[[LLMRequest, LLMResponse], "dict[str, Any] | Awaitable[dict[str, Any]]"]


def default_record(request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
    return {
        "model": response.model,
        "choices": [{"text": t, "finish_reason": r} for t, r in zip(response.texts, response.finish_reasons)],
        "usage": usage_of(response),
        "meta": request.meta,
    }


class _Runner:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        config: ClientConfig,
        store: ResultStore,
        process: Process,
        stats: RunStats,
        bar: Any,  # megaphi.progress.progress: a tqdm bar or its stand-in
    ):
        self.client, self.config, self.store, self.process = client, config, store, process
        self.stats, self.bar = stats, bar
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Honour the server's word, plus a little jitter so paused workers do not return as one.
            return min(retry_after, self.config.max_retry_after_s) + random.uniform(0, 0.1)
        ceiling = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def handle(self, request: LLMRequest) -> None:
        error: AttemptError | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            charged = await self.limiter.acquire(request.estimated_tokens())
            try:
                response = await attempt_once(self.client, self.config, request)
            except Exception as exc:  # noqa: BLE001 - classify_error re-raises what is not the endpoint's fault
                self.limiter.settle(charged, 0)
                error = classify_error(exc, self.config.timeout_s)
                if not error.retryable or attempt == self.config.max_attempts:
                    break
                self.stats.retries += 1
                self.stats.retry_reasons[error.category] += 1
                delay = self.backoff(attempt, error.retry_after)
                if error.category == "429":
                    self.limiter.pause(delay)
                await asyncio.sleep(delay)
                continue
            self.limiter.settle(charged, response.prompt_tokens + response.completion_tokens)
            self.account(response)
            try:
                fields = await self.process_response(request, response)
            except Rejected as rejected:
                if rejected.retryable and attempt < self.config.max_attempts:
                    self.stats.retries += 1
                    self.stats.retry_reasons["rejected"] += 1
                    await asyncio.sleep(self.backoff(attempt, None))
                    continue
                self.stats.rejected += 1
                self.fail(request, f"rejected: {rejected.reason}", attempt, response)
                return
            self.store.write_result({"id": request.id, **fields})
            self.stats.succeeded += 1
            self.tick()
            return
        assert error is not None  # every way out of the loop without an error returned
        self.fail(request, error.reason, attempt)

    def account(self, response: LLMResponse) -> None:
        self.stats.prompt_tokens += response.prompt_tokens
        self.stats.completion_tokens += response.completion_tokens
        self.stats.estimated_cost_usd = (
            self.stats.prompt_tokens * self.config.input_price_per_mtok
            + self.stats.completion_tokens * self.config.output_price_per_mtok
        ) / 1e6

    async def process_response(self, request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
        if inspect.iscoroutinefunction(self.process):
            return await self.process(request, response)
        # Validation may block (a sandbox run): keep the event loop serving the others.
        # Not a coroutine function, so it returns the record itself.
        process = cast(Callable[[LLMRequest, LLMResponse], "dict[str, Any]"], self.process)
        return await asyncio.to_thread(process, request, response)

    def fail(self, request: LLMRequest, reason: str, attempts: int, response: LLMResponse | None = None) -> None:
        record: dict[str, Any] = {"id": request.id, "reason": reason, "attempts": attempts, "meta": request.meta}
        if response is not None:
            record["texts"] = response.texts  # what the model said, so rejections can be audited
            # what the filed answer cost, so a summary read from the files counts rejected answers too
            record["usage"] = usage_of(response)
        self.store.write_failure(record)
        self.stats.failed += 1
        self.tick()

    def tick(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            ok=self.stats.succeeded,
            failed=self.stats.failed,
            tokens=self.stats.prompt_tokens + self.stats.completion_tokens,
            refresh=False,
        )


async def arun_requests(
    requests: Iterable[LLMRequest],
    out_path: str | os.PathLike[str],
    failures_path: str | os.PathLike[str],
    config: ClientConfig,
    *,
    process: Process = default_record,
    retry_failed: bool = False,
    progress: bool = True,
    total: int | None = None,
    client: openai.AsyncOpenAI | None = None,
) -> RunStats:
    """Sends every request not yet finished in `out_path`/`failures_path`; see the module doc."""
    from megaphi.progress import progress as progress_display

    config.validate()
    if client is None:
        client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=config.resolved_api_key(), max_retries=0, timeout=config.timeout_s
        )
    store = ResultStore(out_path, failures_path, retry_failed=retry_failed)
    stats = RunStats()
    if total is None and isinstance(requests, Sized):
        total = len(requests)  # for the progress bar; a generator streams without one
    bar = progress_display(total=total, disable=not progress, desc="requests", unit="req")
    runner = _Runner(client, config, store, process, stats, bar)
    pending = iter(requests)
    seen: set[str] = set()
    start = time.monotonic()

    def next_request() -> LLMRequest | None:
        # Workers share one iterator; the event loop is single-threaded, so this needs no lock.
        for request in pending:
            if request.id in seen:
                raise UserError(f"request id {request.id!r} appears twice: ids must be unique")
            seen.add(request.id)
            stats.requested += 1
            if store.skip_finished(request.id, stats):
                bar.update(1)
                continue
            return request
        return None

    async def worker() -> None:
        while (request := next_request()) is not None:
            await runner.handle(request)

    try:
        await asyncio.gather(*(worker() for _ in range(config.max_concurrency)))
    finally:
        stats.elapsed_s = time.monotonic() - start
        bar.close()
        store.close()
        await client.close()
    return stats


def run_requests(
    requests: Iterable[LLMRequest],
    out_path: str | os.PathLike[str],
    failures_path: str | os.PathLike[str],
    config: ClientConfig,
    **kwargs: Any,
) -> RunStats:
    """Synchronous `arun_requests`, for scripts and CLIs."""
    return asyncio.run(arun_requests(requests, out_path, failures_path, config, **kwargs))
