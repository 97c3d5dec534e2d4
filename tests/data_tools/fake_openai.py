"""A fault-injecting OpenAI-compatible server for reliability tests (binds 127.0.0.1 only).

Each request is identified by its prompt (the completion prompt or the last chat message). A
`plan(prompt, attempt) -> fault` decides what the n-th attempt for that prompt gets, so a test can
script "429 then 500 then ok" for one item and "always malformed" for another, and then check
that the client ended up with every item exactly once in its output or its failure log.
``kill_once_filed`` ends a client command mid-run, as a crash would, for the tests of resumption.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aiohttp import web

from tests.conftest import read_jsonl

FAULTS = ("ok", "429", "500", "400", "timeout", "malformed", "truncated", "no_choices", "length")

Plan = Callable[[str, int], str]


@dataclass
class Hit:
    prompt: str
    attempt: int
    fault: str
    time: float


def always_ok(prompt: str, attempt: int) -> str:
    return "ok"


def echo_answer(prompt: str) -> str:
    return f"answer to: {prompt}"


class FakeOpenAI:
    """Runs in a background thread; use as a context manager and point clients at `base_url`."""

    def __init__(
        self,
        plan: Plan = always_ok,
        answer: Callable[[str], str] = echo_answer,
        *,
        delay_s: float = 0.0,
        retry_after: str = "1",
        hang_s: float = 30.0,
        answer_chat: Callable[[list[dict]], str] | None = None,
    ):
        self.plan = plan
        self.answer = answer
        self.answer_chat = answer_chat  # sees the whole chat (system message included), when given
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.hits: list[Hit] = []
        self._attempts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def hits_by_prompt(self) -> dict[str, list[str]]:
        by_prompt: dict[str, list[str]] = defaultdict(list)
        with self._lock:
            for hit in self.hits:
                by_prompt[hit.prompt].append(hit.fault)
        return dict(by_prompt)

    def __enter__(self) -> "FakeOpenAI":
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def __exit__(self, *exc) -> None:
        assert self._loop is not None and self._runner is not None
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:  # e.g. a "timeout" answer still sleeping
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def _serve(self, started: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = "messages" in body
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with self._lock:
            attempt = self._attempts[prompt]
            self._attempts[prompt] += 1
            fault = self.plan(prompt, attempt)
            self.hits.append(Hit(prompt, attempt, fault, time.monotonic()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

        def error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
            payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            return web.json_response(payload, status=status, headers=headers)

        if fault == "429":
            return error(429, "Rate limit reached", "rate_limit_error", {"Retry-After": self.retry_after})
        if fault == "500":
            return error(500, "The server had an error", "server_error")
        if fault == "400":
            return error(400, "This prompt is not allowed", "invalid_request_error")
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        if fault == "malformed":
            return web.Response(text='{"id": "cmpl-1", "choices": [', content_type="application/json")
        if fault == "no_choices":
            return web.json_response({"id": "cmpl-1", "object": "text_completion", "model": body["model"]})
        text = self.answer_chat(body["messages"]) if chat and self.answer_chat else self.answer(prompt)
        payload = _completion(body, text, "length" if fault == "length" else "stop", chat)
        if fault == "truncated":
            # Announce the whole body, send half of it, then drop the connection.
            data = json.dumps(payload).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            request.transport.close()
            return response
        return web.json_response(payload)


def _completion(body: dict, text: str, finish_reason: str, chat: bool) -> dict:
    n = body.get("n") or 1
    if chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            for i in range(n)
        ]
    else:
        choices = [{"index": i, "text": text, "finish_reason": finish_reason, "logprobs": None} for i in range(n)]
    completion_tokens = len(text.split()) * n
    prompt_tokens = len(json.dumps(body.get("messages") or body.get("prompt")).split())
    return {
        "id": "cmpl-fake",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def kill_once_filed(command: list[str], *, cwd: Path, env: dict[str, str], files: list[Path], records: int) -> None:
    """Starts ``command`` and SIGKILLs it as soon as ``files`` hold ``records`` records together (a run
    that exits or stalls for a minute before that fails the test with its stderr)."""
    run = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while sum(len(read_jsonl(path, missing_ok=True)) for path in files) < records:
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read().decode()
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
