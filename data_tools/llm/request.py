"""What goes to the endpoint and what comes back: one request, its response, a `process` hook's
rejection of an answer, and the ``usage`` a filed record carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
        if self.messages is not None:
            text = "".join(m["content"] for m in self.messages)
        else:
            text = self.prompt or ""
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


def usage_of(response: LLMResponse) -> dict[str, int]:
    """The ``usage`` field of a filed record: the tokens of the answer it holds."""
    return {"prompt_tokens": response.prompt_tokens, "completion_tokens": response.completion_tokens}
