"""A synthesis run's configuration and what each of its tasks does (data_tools.synth textbooks|exercises).

``SynthConfig`` holds a run's flags; ``generate_task`` files an answer for every prompt of one task
(data_tools.synth_prompts) through data_tools.llm, textbooks kept as they come (``textbook_record``),
exercises validated (data_tools.synth_exercises). How a run is split into tasks and merged:
data_tools.synth_run.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from data_tools.llm import (
    ClientConfig,
    LLMRequest,
    LLMResponse,
    Rejected,
    RunStats,
    add_client_arguments,
    failures_path_for,
    run_requests,
    usage_of,
)
from data_tools.synth_exercises import ExerciseValidator
from data_tools.synth_prompts import KINDS, PromptPlan, SynthPrompt, plan_for, repeat_warning, sample_prompts
from data_tools.synth_seeds import SEED_KINDS, SeedOptions
from megaphi.common.errors import UserError
from megaphi.eval.sandbox import check_sandbox


@dataclass
class SynthConfig:
    """One ``python -m data_tools.synth textbooks|exercises`` run: a field per flag (``--foo-bar`` is
    ``foo_bar``, same defaults), the endpoint's flags in ``client``. How it is split into tasks and
    merged: data_tools.synth_run."""

    kind: str = "textbooks"
    count: int = 0  # prompts to sample; required
    out: str = ""  # the merged output JSONL; required
    failures: str | None = None  # the merged failure log; None: OUT.failures.jsonl
    prompts: str | None = None  # prompt YAML; None: data_tools/prompts/KIND.yaml
    seed: int = 0
    outline: str | None = None
    seed_corpus: list[str] | None = None  # [] : the default corpus (DEFAULT_SEED_CORPUS)
    seed_pool: int = SeedOptions.pool
    seed_kinds: list[str] = field(default_factory=lambda: list(SEED_KINDS))
    warn_repeats: float = 1.0
    keep_truncated: bool = False
    sandbox_timeout: float = 10.0
    sandbox_memory_mb: int = 1024
    unsafe_no_sandbox: bool = False
    keep_near_duplicates: bool = False
    api: str = "chat"
    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    retry_failed: bool = False
    no_progress: bool = False
    client: ClientConfig = field(default_factory=ClientConfig)

    @property
    def failures_path(self) -> Path:
        return Path(self.failures) if self.failures else failures_path_for(Path(self.out))

    def check(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.count < 1:
            raise UserError(f"count must be at least 1, got {self.count}")
        if not self.out:
            raise UserError("no output: give --out, e.g. synth/textbooks.jsonl")
        if self.api not in ("chat", "completion"):
            raise UserError(f"api must be 'chat' or 'completion', got {self.api!r}")
        if self.warn_repeats <= 0:
            raise UserError(f"--warn-repeats must be positive, got {self.warn_repeats}")
        if self.seed_corpus is None and (self.seed_pool != SeedOptions.pool or tuple(self.seed_kinds) != SEED_KINDS):
            raise UserError("--seed-pool and --seed-kinds shape seed-conditioned prompts: add --seed-corpus")
        if Path(self.out).resolve() == self.failures_path.resolve():
            raise UserError(f"output and failure log are the same file ({self.out}): give two paths")
        self.client.validate()
        self.client.resolved_api_key()

    def plan(self) -> PromptPlan:
        return plan_for(
            self.kind,
            prompts_path=self.prompts,
            outline_path=self.outline,
            seed_corpus=self.seed_corpus,
            seed_options=SeedOptions(pool=self.seed_pool, kinds=tuple(self.seed_kinds)),
            seed=self.seed,
        )


def announce(config: SynthConfig) -> PromptPlan:
    """Prints the size of the prompt space to stderr, with a warning when ``count`` exceeds it by more
    than ``warn_repeats``: once per run, before any request."""
    plan = config.plan()
    print(f"prompt space: {plan.describe()}; {config.count:,} requested", file=sys.stderr)
    if (warning := repeat_warning(plan, config.count, config.warn_repeats)) is not None:
        print(warning, file=sys.stderr)
    return plan


def generate_task(
    config: SynthConfig, rank: int, tasks: int, out_path: str | Path, failures_path: str | Path
) -> RunStats:
    """Files an answer for every prompt of task ``rank`` of ``tasks`` (see :func:`sample_prompts`) in
    ``out_path`` or ``failures_path``, through data_tools.llm: a rerun skips the ids these files
    already settle, so a killed task resumes and no id is asked twice. A single run is task 0 of 1."""
    plan = config.plan()
    # A generator: a task of millions of prompts never holds them all in memory.
    requests = build_requests(
        sample_prompts(plan, config.count, config.seed, rank=rank, tasks=tasks),
        api=config.api,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
    )
    process: Callable[[LLMRequest, LLMResponse], dict[str, Any]]
    if config.kind == "exercises":
        if not config.unsafe_no_sandbox:
            check_sandbox()  # fail before any request is paid for
        process = ExerciseValidator(
            timeout_s=config.sandbox_timeout,
            memory_mb=config.sandbox_memory_mb,
            unsafe_no_sandbox=config.unsafe_no_sandbox,
        )
    else:
        process = functools.partial(textbook_record, keep_truncated=config.keep_truncated)
    return run_requests(
        requests,
        out_path,
        failures_path,
        config.client,
        process=process,
        retry_failed=config.retry_failed,
        progress=not config.no_progress,
        total=len(range(rank, config.count, tasks)),
    )


def build_requests(
    prompts: Iterator[SynthPrompt], *, api: str, max_tokens: int, temperature: float, top_p: float
) -> Iterator[LLMRequest]:
    # No per-request seed: servers that batch (megaphi.serve, vLLM) must run seeded requests apart.
    for p in prompts:
        common: dict[str, Any] = dict(id=p.id, max_tokens=max_tokens, temperature=temperature, top_p=top_p, meta=p.meta)
        if api == "chat":
            messages = [{"role": "system", "content": p.system}, {"role": "user", "content": p.user}]
            yield LLMRequest(messages=messages, **common)
        else:
            yield LLMRequest(prompt=f"{p.system}\n\n{p.user}\n\n", **common)


def textbook_record(request: LLMRequest, response: LLMResponse, *, keep_truncated: bool = False) -> dict[str, Any]:
    text = response.text.strip()
    if not text:
        raise Rejected("empty answer")
    if response.truncated and not keep_truncated:
        raise Rejected(f"truncated at max_tokens={request.max_tokens} (raise --max-tokens or pass --keep-truncated)")
    return {
        "text": text,
        "meta": request.meta,
        "model": response.model,
        "usage": usage_of(response),
    }


def add_generation_arguments(parser: argparse.ArgumentParser, *, per_task: bool = False) -> None:
    parser.add_argument("--api", choices=("chat", "completion"), default="chat")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--retry-failed", action="store_true", help="retry the ids in the failure log")
    parser.add_argument("--no-progress", action="store_true")
    add_client_arguments(parser, per_task=per_task)
