"""Where an LLM client sends requests and how hard it pushes the endpoint: ``ClientConfig`` and the
endpoint flags every LLM-backed command shares."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from megaphi.common.errors import UserError


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


# The flag of each ClientConfig field a command sets (argparse dest, before a command's prefix).
CLIENT_FLAGS = {
    "base_url": "base_url",
    "api_key": "api_key",
    "model": "model",
    "max_concurrency": "max_concurrency",
    "requests_per_minute": "requests_per_minute",
    "tokens_per_minute": "tokens_per_minute",
    "max_attempts": "max_attempts",
    "timeout_s": "timeout",
    "backoff_initial_s": "backoff_initial",
    "backoff_max_s": "backoff_max",
    "input_price_per_mtok": "input_price",
    "output_price_per_mtok": "output_price",
}


def client_config_from_args(args: argparse.Namespace, *, prefix: str = "", check: bool = True) -> ClientConfig:
    """The client the flags describe (``--{prefix}base-url`` and so on, e.g. the graded eval's ``--judge-*``);
    ``check=False`` leaves validating it to a caller that checks its own flags first."""
    config = ClientConfig(**{field: getattr(args, prefix + flag) for field, flag in CLIENT_FLAGS.items()})
    if check:
        config.validate()
        config.resolved_api_key()
    return config
