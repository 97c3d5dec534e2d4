"""The async client layer that every LLM-backed data tool goes through.

One call, `run_requests(requests, out_path, failures_path, config)`, sends a stream of prompts to
any OpenAI-compatible endpoint (OpenAI, vLLM, TGI, `megaphi.serve`) and files every request exactly
once: in the output JSONL when it succeeded, or in the failure JSONL with the reason when it did not.
Both files are append-only and keyed by the request id, so a run that is killed at any moment is
resumed by running the same command again: finished ids are skipped, nothing is asked twice.

Around the `openai` client (its own retries switched off, so that every attempt is ours to count):
- a concurrency limit (a fixed pool of workers pulling from the request stream, so millions of
  requests never sit in memory at once),
- a requests-per-minute and tokens-per-minute budget (token buckets; a 429 pauses every worker),
- retries with exponential backoff and jitter that honour `Retry-After` / `retry-after-ms`,
- a wall-clock timeout per attempt, and malformed or incomplete responses treated as retryable
  (so are answers that a `process` hook rejects with `Rejected(..., retryable=True)`),
- usage accounting and a cost estimate from per-million-token prices.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import inspect
import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator

import openai

from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text
from megaphi.common.jsonl import MalformedRecordError, iter_numbered_jsonl

# HTTP statuses worth another attempt; every other 4xx is the request's own fault and final.
RETRYABLE_STATUSES = {408, 409, 429}


@dataclass
class ClientConfig:
    """Where to send requests and how hard to push the endpoint."""

    base_url: str | None = None  # None: OPENAI_BASE_URL or api.openai.com
    api_key: str | None = None  # None: OPENAI_API_KEY; local endpoints accept any key
    model: str = "gpt-3.5-turbo"
    max_concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 600.0  # a Retry-After beyond this is clamped, not obeyed for hours
    timeout_s: float = 120.0
    input_price_per_mtok: float = 0.0  # USD per million prompt tokens, for the cost estimate
    output_price_per_mtok: float = 0.0

    def validate(self) -> None:
        for name in ("max_concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name} must be positive (or unset for no limit), got {value}")
        for name in ("backoff_initial_s", "backoff_max_s", "timeout_s", "max_retry_after_s"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("input_price_per_mtok", "output_price_per_mtok"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.model:
            raise UserError("model is empty: name the model the endpoint serves (--model)")

    def resolved_api_key(self) -> str:
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if self.base_url or os.environ.get("OPENAI_BASE_URL"):
            return "EMPTY"  # local OpenAI-compatible servers do not check the key
        raise UserError("no API key: set OPENAI_API_KEY or pass --api-key (or --base-url for a local server)")


@dataclass
class LLMRequest:
    """One prompt: chat `messages` or a plain completion `prompt`, never both."""

    id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] | None = None
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError(f"request {self.id!r}: give exactly one of messages= or prompt=")

    def estimated_tokens(self) -> int:
        # ~4 characters per token is the usual rule of thumb for English and code.
        text = self.prompt if self.prompt is not None else "".join(m["content"] for m in self.messages)
        return len(text) // 4 + 1 + self.max_tokens * self.n


@dataclass
class LLMResponse:
    model: str
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def truncated(self) -> bool:
        return any(reason == "length" for reason in self.finish_reasons)


class Rejected(Exception):
    """Raised by a `process` hook: the answer arrived but is unusable; filed as a failure.

    With ``retryable=True`` the request is asked again (like a malformed response) while attempts
    remain, and filed as a failure only after the last one."""

    def __init__(self, reason: str, *, retryable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class MalformedResponse(Exception):
    pass


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


# ---------------------------------------------------------------------------------------------
# The append-only store


class ResultStore:
    """Output and failure JSONL files, each line a JSON object with an "id".

    A line is written with a single `write` on an O_APPEND descriptor, so a kill leaves at most one
    torn last line; opening the store cuts such a tail off before anything new is appended.
    """

    def __init__(self, out_path: str | Path, failures_path: str | Path, *, retry_failed: bool = False):
        self.out_path, self.failures_path = Path(out_path), Path(failures_path)
        if self.out_path.resolve() == self.failures_path.resolve():
            raise UserError(f"output and failure log are the same file ({self.out_path}): give two paths")
        self.done_ids = _load_ids(self.out_path)
        failed = _load_ids(self.failures_path)
        if retry_failed and failed:
            # Drop the old verdicts before retrying; a kill now leaves those ids pending, never lost.
            _rewrite_without(self.failures_path, failed - self.done_ids)
            failed &= self.done_ids
        self.failed_ids = failed
        self._out = _open_append(self.out_path)
        self._failures = _open_append(self.failures_path)

    def skip_finished(self, request_id: str, stats: "RunStats") -> bool:
        """True when an earlier run already settled ``request_id``, counted in ``stats`` as done or failed."""
        if request_id in self.done_ids:
            stats.already_done += 1
            return True
        if request_id in self.failed_ids:
            stats.failed_before += 1
            return True
        return False

    def write_result(self, record: dict[str, Any]) -> None:
        _append_line(self._out, record)
        self.done_ids.add(record["id"])

    def write_failure(self, record: dict[str, Any]) -> None:
        _append_line(self._failures, record)
        self.failed_ids.add(record["id"])

    def close(self) -> None:
        os.close(self._out)
        os.close(self._failures)


def _open_append(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _append_line(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    written = os.write(fd, data)
    while written < len(data):  # short writes only happen on odd filesystems
        written += os.write(fd, data[written:])


def _load_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:  # a torn last line from a killed run
            f.truncate(len(complete))
    return {record["id"] for record in _records_with_ids(path)}


def _records_with_ids(path: Path) -> Iterator[dict[str, Any]]:
    for number, record in iter_numbered_jsonl(path, hint="fix or remove that line"):
        if not isinstance(record.get("id"), str):
            raise MalformedRecordError(f"{path}:{number}: a record without a string 'id': fix or remove that line")
        yield record


def _rewrite_without(path: Path, ids: set[str]) -> None:
    kept = [record for record in _records_with_ids(path) if record["id"] not in ids]
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in kept))


# ---------------------------------------------------------------------------------------------
# Rate limiting


class RateLimiter:
    """Token buckets for requests and tokens per minute, plus a shared pause after a 429."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self._requests = requests_per_minute or 0.0
        self._tokens = tokens_per_minute or 0.0
        self._last = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        if self.rpm:
            self._requests = min(self.rpm, self._requests + elapsed * self.rpm / 60)
        if self.tpm:
            self._tokens = min(self.tpm, self._tokens + elapsed * self.tpm / 60)

    async def acquire(self, tokens: int) -> int:
        """Waits until one request and `tokens` tokens fit the budget; returns the tokens charged."""
        tokens = min(tokens, int(self.tpm)) if self.tpm else tokens
        async with self._lock:  # first come first served: nobody overtakes a waiting large request
            while True:
                self._refill()
                wait = self._paused_until - time.monotonic()
                if self.rpm and self._requests < 1:
                    wait = max(wait, (1 - self._requests) * 60 / self.rpm)
                if self.tpm and self._tokens < tokens:
                    wait = max(wait, (tokens - self._tokens) * 60 / self.tpm)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.rpm:
                self._requests -= 1
            if self.tpm:
                self._tokens -= tokens
        return tokens

    def settle(self, charged: int, actual: int) -> None:
        if self.tpm:
            self._tokens = min(self.tpm, self._tokens + charged - actual)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)


# ---------------------------------------------------------------------------------------------
# One request, with retries


@dataclass
class _AttemptError:
    reason: str
    category: str
    retryable: bool
    retry_after: float | None = None


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)  # the HTTP-date form
        return None if when is None else max(0.0, when.timestamp() - time.time())


def _classify(exc: BaseException, timeout_s: float) -> _AttemptError:
    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return _AttemptError(f"timed out after {timeout_s:g}s", "timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return _AttemptError(f"connection error: {type(cause).__name__}: {cause}", "connection", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = exc.message if isinstance(exc.message, str) else str(exc)
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return _AttemptError(f"HTTP {status}: {message}", str(status), retryable, _retry_after(exc.response.headers))
    if isinstance(exc, (MalformedResponse, json.JSONDecodeError, openai.APIResponseValidationError)):
        return _AttemptError(f"malformed response: {exc}", "malformed", True)
    raise exc  # anything else is a bug in this program, not the endpoint's weather


def _parse(response: Any, chat: bool) -> LLMResponse:
    if not hasattr(response, "choices"):
        raise MalformedResponse(f"expected a completion object, got {str(response)[:200]!r}")
    choices = response.choices
    if not choices:
        raise MalformedResponse("no choices in the response")
    texts, reasons = [], []
    for choice in choices:
        text = choice.message.content if chat and choice.message is not None else getattr(choice, "text", None)
        if not isinstance(text, str):
            raise MalformedResponse(f"choice {choice.index} carries no text")
        texts.append(text)
        reasons.append(choice.finish_reason or "unknown")
    usage = response.usage
    return LLMResponse(
        model=response.model or "",
        texts=texts,
        finish_reasons=reasons,
        prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
        completion_tokens=(usage.completion_tokens or 0) if usage else 0,
    )


async def _attempt(client: openai.AsyncOpenAI, config: ClientConfig, request: LLMRequest) -> LLMResponse:
    params: dict[str, Any] = dict(
        model=config.model,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        n=request.n,
    )
    if request.stop:
        params["stop"] = request.stop
    if request.seed is not None:
        params["seed"] = request.seed
    if request.messages is not None:
        call = client.chat.completions.create(messages=request.messages, **params)
    else:
        call = client.completions.create(prompt=request.prompt, **params)
    # The client's own timeout bounds each socket read; this bounds the whole attempt.
    response = await asyncio.wait_for(call, config.timeout_s)
    return _parse(response, chat=request.messages is not None)


Process = Callable[[LLMRequest, LLMResponse], "dict[str, Any] | Awaitable[dict[str, Any]]"]


def usage_of(response: LLMResponse) -> dict[str, int]:
    """The ``usage`` field of a filed record: the tokens of the answer it holds."""
    return {"prompt_tokens": response.prompt_tokens, "completion_tokens": response.completion_tokens}


def default_record(request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
    return {
        "model": response.model,
        "choices": [{"text": t, "finish_reason": r} for t, r in zip(response.texts, response.finish_reasons)],
        "usage": usage_of(response),
        "meta": request.meta,
    }


class _Runner:
    def __init__(self, client, config: ClientConfig, store: ResultStore, process: Process, stats: RunStats, bar):
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
        error: _AttemptError | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            charged = await self.limiter.acquire(request.estimated_tokens())
            try:
                response = await _attempt(self.client, self.config, request)
            except Exception as exc:  # noqa: BLE001 - _classify re-raises what is not the endpoint's fault
                self.limiter.settle(charged, 0)
                error = _classify(exc, self.config.timeout_s)
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
        return await asyncio.to_thread(self.process, request, response)

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
    out_path: str | Path,
    failures_path: str | Path,
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
    if total is None and hasattr(requests, "__len__"):
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
    out_path: str | Path,
    failures_path: str | Path,
    config: ClientConfig,
    **kwargs: Any,
) -> RunStats:
    """Synchronous `arun_requests`, for scripts and CLIs."""
    return asyncio.run(arun_requests(requests, out_path, failures_path, config, **kwargs))


# ---------------------------------------------------------------------------------------------
# Shared command-line arguments


def add_client_arguments(parser: argparse.ArgumentParser, *, per_task: bool = False) -> None:
    """The endpoint flags. ``per_task``: the command runs as several tasks, each with its own client,
    so the concurrency and budgets apply to each task (the help says so)."""
    group = parser.add_argument_group("endpoint (any OpenAI-compatible server)")
    each = "; per task: N tasks ask up to N times this" if per_task else ""
    group.add_argument("--base-url", help="e.g. http://127.0.0.1:8000/v1 for megaphi.serve (default: OpenAI)")
    group.add_argument("--api-key", help="default: $OPENAI_API_KEY")
    group.add_argument("--model", default=ClientConfig.model, help="model name the endpoint serves")
    group.add_argument(
        "--max-concurrency",
        type=int,
        default=ClientConfig.max_concurrency,
        help=f"requests in flight at once (default: {ClientConfig.max_concurrency}{each})",
    )
    group.add_argument("--requests-per-minute", type=float, help=f"request budget (default: unlimited{each})")
    group.add_argument("--tokens-per-minute", type=float, help=f"token budget (default: unlimited{each})")
    group.add_argument("--max-attempts", type=int, default=ClientConfig.max_attempts)
    group.add_argument("--timeout", type=float, default=ClientConfig.timeout_s, help="seconds per attempt")
    group.add_argument("--backoff-initial", type=float, default=ClientConfig.backoff_initial_s)
    group.add_argument("--backoff-max", type=float, default=ClientConfig.backoff_max_s)
    group.add_argument("--input-price", type=float, default=0.0, help="USD per million prompt tokens")
    group.add_argument("--output-price", type=float, default=0.0, help="USD per million completion tokens")


def client_config_from_args(args: argparse.Namespace, *, check: bool = True) -> ClientConfig:
    """The client the flags describe; ``check=False`` leaves validating it to a caller that checks its
    own flags first."""
    config = ClientConfig(
        base_url=args.base_url,
        api_key=args.api_key,
        model=args.model,
        max_concurrency=args.max_concurrency,
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
        max_attempts=args.max_attempts,
        timeout_s=args.timeout,
        backoff_initial_s=args.backoff_initial,
        backoff_max_s=args.backoff_max,
        input_price_per_mtok=args.input_price,
        output_price_per_mtok=args.output_price,
    )
    if check:
        config.validate()
        config.resolved_api_key()
    return config
