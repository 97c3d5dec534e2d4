"""What an OpenAI request may ask of megaphi.serve: the parameters it accepts (those it cannot honour
only at their no-op value), the checks on their values and on the context length, and the JSON error a
bad request gets back, with OpenAI's wording, field names and status codes so that its clients react
as they would to OpenAI."""

from __future__ import annotations

from typing import Any, overload

from aiohttp import web

from megaphi.batcher import Sampling

MAX_N = 128
MAX_STOP_SEQUENCES = 4
# Parameters OpenAI defines that this server cannot honour: accepted only at their no-op value.
NO_OP_PARAMETERS: dict[str, tuple[Any, ...]] = {
    "stream": (False, None),
    "echo": (False, None),
    "logprobs": (False, None),
    "top_logprobs": (None, 0),
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "stream_options": (None,),
}
COMMON_PARAMETERS = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "user"}
COMPLETION_PARAMETERS = COMMON_PARAMETERS | {"prompt"} | set(NO_OP_PARAMETERS)
CHAT_PARAMETERS = COMMON_PARAMETERS | {"messages", "max_completion_tokens"} | set(NO_OP_PARAMETERS)


class RequestError(Exception):
    """A bad request: becomes an OpenAI-shaped JSON error."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"{value!r} is not valid for '{name}': expected a number from {low:g} to {high:g}", name)
    return float(value)


@overload
def _integer(body: dict, name: str, default: int, low: int, high: int) -> int: ...


@overload
def _integer(body: dict, name: str, default: None, low: int, high: int) -> int | None: ...


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{value!r} is not valid for '{name}': expected an integer from {low} to {high}", name)
    return value


def check_parameters(body: dict, allowed: set[str]) -> None:
    for name, value in body.items():
        if name not in allowed:
            raise RequestError(f"Unrecognized request argument supplied: {name}", name)
        if name in NO_OP_PARAMETERS and value not in NO_OP_PARAMETERS[name]:
            raise RequestError(f"'{name}' = {value!r} is not supported by this server; leave it unset", name)


def parse_sampling(
    body: dict, prompt_tokens: int, context: int, default_max_tokens: int | None, max_tokens_name: str = "max_tokens"
) -> Sampling:
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:  # only the most likely token survives the nucleus: greedy
        temperature = 0.0
    room = context - prompt_tokens
    if room < 1:
        raise RequestError(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{prompt_tokens} tokens. Please shorten the prompt.",
            "messages" if max_tokens_name == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    max_tokens = _integer(body, max_tokens_name, default_max_tokens or room, 1, 1 << 30)
    if prompt_tokens + max_tokens > context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for "
            f"the completion). Please reduce the prompt or {max_tokens_name}.",
            max_tokens_name,
            code="context_length_exceeded",
        )
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"'stop' must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them", "stop")
    seed = _integer(body, "seed", None, -(1 << 63), (1 << 63) - 1)
    n = _integer(body, "n", 1, 1, MAX_N)
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=n, stop=stop, seed=seed)
