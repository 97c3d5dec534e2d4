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

The package's modules, one concern each: config.py (ClientConfig and the endpoint flags), request.py
(LLMRequest, LLMResponse, Rejected), store.py (the resumable output and failure files), rate_limit.py
(the budgets), attempt.py (one call to the endpoint), runner.py (the workers, retries, RunStats).
Every LLM-backed tool imports what it uses from ``data_tools.llm`` itself, its one public face.
"""

from data_tools.llm.config import ClientConfig, add_client_arguments, client_config_from_args
from data_tools.llm.rate_limit import RateLimiter
from data_tools.llm.request import LLMRequest, LLMResponse, MalformedResponse, Rejected, usage_of
from data_tools.llm.runner import Process, RunStats, arun_requests, default_record, run_requests
from data_tools.llm.store import FAILURES_SUFFIX, ResultStore, failures_path_for

__all__ = [
    "ClientConfig",
    "add_client_arguments",
    "client_config_from_args",
    "RateLimiter",
    "LLMRequest",
    "LLMResponse",
    "MalformedResponse",
    "Rejected",
    "usage_of",
    "Process",
    "RunStats",
    "arun_requests",
    "default_record",
    "run_requests",
    "ResultStore",
    "FAILURES_SUFFIX",
    "failures_path_for",
]
