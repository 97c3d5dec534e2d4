"""One attempt at a request: the call to the endpoint, its answer parsed, its error classified."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from dataclasses import dataclass
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from data_tools.llm.config import ClientConfig
from data_tools.llm.request import LLMRequest, LLMResponse, MalformedResponse

# HTTP statuses worth another attempt; every other 4xx is the request's own fault and final.
RETRYABLE_STATUSES = {408, 409, 429}


@dataclass
class AttemptError:
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


def classify_error(exc: BaseException, timeout_s: float) -> AttemptError:
    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return AttemptError(f"timed out after {timeout_s:g}s", "timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return AttemptError(f"connection error: {type(cause).__name__}: {cause}", "connection", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = exc.message if isinstance(exc.message, str) else str(exc)
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return AttemptError(f"HTTP {status}: {message}", str(status), retryable, _retry_after(exc.response.headers))
    if isinstance(exc, (MalformedResponse, json.JSONDecodeError, openai.APIResponseValidationError)):
        return AttemptError(f"malformed response: {exc}", "malformed", True)
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


async def attempt_once(client: openai.AsyncOpenAI, config: ClientConfig, request: LLMRequest) -> LLMResponse:
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
        # {"role": ..., "content": ...} dicts are what the API takes; its TypedDicts want a literal role.
        messages = cast("list[ChatCompletionMessageParam]", request.messages)
        call = client.chat.completions.create(messages=messages, **params)
    else:
        call = client.completions.create(prompt=request.prompt, **params)
    # The client's own timeout bounds each socket read; this bounds the whole attempt.
    response = await asyncio.wait_for(call, config.timeout_s)
    return _parse(response, chat=request.messages is not None)
