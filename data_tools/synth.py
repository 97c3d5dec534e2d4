"""Synthetic textbooks and exercises from an OpenAI-compatible endpoint (phi-1 paper, section 2.2).

    python -m data_tools.synth textbooks --count 1000 --out synth/textbooks.jsonl --base-url URL --model M
    python -m data_tools.synth exercises --count 1000 --out synth/exercises.jsonl --base-url URL --model M

Prompts are sampled with a seed from YAML lists (topics with subtopics, audiences, styles and, for
exercises, function-name verbs/nouns and concepts; defaults in data_tools/prompts/), because the
paper found that diversity has to be forced into the prompts. Exercises are HumanEval-shaped
(signature + docstring, solution, `check(candidate)` tests) and are kept only if they parse and
their solution passes its own tests in the evaluation sandbox; everything else goes to the failure
log with the reason. Requests go through data_tools.llm: a killed run resumes when rerun.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from data_tools.llm import (
    ClientConfig,
    LLMRequest,
    LLMResponse,
    Rejected,
    RunStats,
    add_client_arguments,
    client_config_from_args,
    run_requests,
)
from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.eval.sandbox import SandboxResult, check_sandbox, run_programs

KINDS = ("textbooks", "exercises")
PROMPTS_DIR = Path(__file__).parent / "prompts"


# ---------------------------------------------------------------------------------------------
# Prompt space and sampling


@dataclass
class PromptSpace:
    system: str
    template: str
    topics: list[tuple[str, list[str]]]
    audiences: list[str]
    styles: list[str]
    function_name_verbs: list[str]
    function_name_nouns: list[str]
    concepts: list[str]


def load_prompt_space(path: str | Path, kind: str) -> PromptSpace:
    """Reads and checks a prompt YAML; a missing or empty list is a ValueError naming it."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")

    def strings(key: str, where: Any = data, label: str = "") -> list[str]:
        value = where.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise UserError(f"{path}: '{label}{key}' must be a non-empty list of strings")
        return value

    for key in ("system", "template"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise UserError(f"{path}: '{key}' must be a non-empty string")
    raw_topics = data.get("topics")
    if not isinstance(raw_topics, list) or not raw_topics:
        raise UserError(f"{path}: 'topics' must be a non-empty list of {{name, subtopics}}")
    topics = []
    for i, topic in enumerate(raw_topics):
        if not isinstance(topic, dict) or not isinstance(topic.get("name"), str):
            raise UserError(f"{path}: 'topics[{i}]' must be a mapping with a 'name' and 'subtopics'")
        topics.append((topic["name"], strings("subtopics", topic, f"topics[{i}].")))
    exercises = kind == "exercises"
    space = PromptSpace(
        system=data["system"].strip(),
        template=data["template"],
        topics=topics,
        audiences=strings("audiences"),
        styles=strings("styles"),
        function_name_verbs=strings("function_name_verbs") if exercises else [],
        function_name_nouns=strings("function_name_nouns") if exercises else [],
        concepts=strings("concepts") if exercises else [],
    )
    fields = {"topic", "subtopic", "audience", "style"} | ({"concept", "function_name"} if exercises else set())
    try:
        space.template.format(**{name: "x" for name in fields})
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"{path}: 'template' uses an unknown or malformed placeholder ({exc}); "
                         f"available: {', '.join(sorted(fields))}") from None
    return space


@dataclass
class SynthPrompt:
    id: str
    system: str
    user: str
    meta: dict[str, Any]


def sample_prompts(space: PromptSpace, kind: str, count: int, seed: int) -> Iterator[SynthPrompt]:
    """The same (space, kind, count, seed) always yields the same prompts with the same ids."""
    if count < 1:
        raise UserError(f"count must be at least 1, got {count}")
    rng = random.Random(seed)
    for index in range(count):
        topic, subtopics = rng.choice(space.topics)
        meta: dict[str, Any] = {
            "topic": topic,
            "subtopic": rng.choice(subtopics),
            "audience": rng.choice(space.audiences),
            "style": rng.choice(space.styles),
        }
        if kind == "exercises":
            meta["concept"] = rng.choice(space.concepts)
            meta["function_name"] = f"{rng.choice(space.function_name_verbs)}_{rng.choice(space.function_name_nouns)}"
        user = space.template.format(**meta)
        # The index keeps equal prompts apart; the hash keeps a changed prompt file from reusing ids.
        digest = hashlib.sha1(f"{space.system}\n{user}".encode()).hexdigest()[:10]
        yield SynthPrompt(id=f"{kind}-{index:08d}-{digest}", system=space.system, user=user, meta=meta)


def build_requests(
    prompts: Iterator[SynthPrompt], *, api: str, max_tokens: int, temperature: float, top_p: float
) -> Iterator[LLMRequest]:
    # No per-request seed: servers that batch (megaphi.serve, vLLM) must run seeded requests apart.
    for p in prompts:
        common = dict(id=p.id, max_tokens=max_tokens, temperature=temperature, top_p=top_p, meta=p.meta)
        if api == "chat":
            messages = [{"role": "system", "content": p.system}, {"role": "user", "content": p.user}]
            yield LLMRequest(messages=messages, **common)
        else:
            yield LLMRequest(prompt=f"{p.system}\n\n{p.user}\n\n", **common)


# ---------------------------------------------------------------------------------------------
# Textbooks


def textbook_record(request: LLMRequest, response: LLMResponse, *, keep_truncated: bool = False) -> dict[str, Any]:
    text = response.text.strip()
    if not text:
        raise Rejected("empty answer")
    if response.truncated and not keep_truncated:
        raise Rejected(f"truncated at max_tokens={request.max_tokens} (raise --max-tokens or pass --keep-truncated)")
    return {"text": text, "meta": request.meta, "model": response.model,
            "usage": {"prompt_tokens": response.prompt_tokens, "completion_tokens": response.completion_tokens}}


# ---------------------------------------------------------------------------------------------
# Exercises

CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class Exercise:
    """HumanEval's shape: prompt (imports + signature + docstring), solution body, check(candidate)."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    def program(self) -> str:
        return f"{self.prompt}{self.canonical_solution}\n\n{self.test}\n\ncheck({self.entry_point})\n"

    def to_dict(self) -> dict[str, str]:
        # ``text`` is what the later stages (dedup, decontaminate, preprocess) read: the exercise as the
        # model is finetuned on it, signature and docstring followed by the solution (the paper's
        # CodeExercises); the tests stay out of the training text.
        return {"task_id": self.task_id, "prompt": self.prompt, "canonical_solution": self.canonical_solution,
                "test": self.test, "entry_point": self.entry_point, "text": self.prompt + self.canonical_solution}


def parse_exercise(text: str, entry_point: str, task_id: str) -> Exercise:
    """Splits a model's answer into an Exercise; a Rejected names what is missing or broken."""
    blocks = CODE_BLOCK.findall(text)
    if not blocks:
        raise Rejected("no ```python code block in the answer")
    code = "\n\n".join(block.strip("\n") for block in blocks) + "\n"
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise Rejected(f"does not parse: {exc.msg} (line {exc.lineno})") from None
    lines = code.splitlines(keepends=True)
    function = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point), None)
    if function is None:
        raise Rejected(f"no top-level function named {entry_point!r}")
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or check.lineno < function.end_lineno:
        raise Rejected("no `def check(candidate)` after the function")
    if ast.get_docstring(function) is None:
        raise Rejected(f"{entry_point} has no docstring")
    if len(function.body) < 2:
        raise Rejected(f"{entry_point} has no solution body after its docstring")
    asserts = [n for n in ast.walk(check) if isinstance(n, ast.Assert)]
    uses_candidate = any(isinstance(n, ast.Name) and n.id == check.args.args[0].arg
                         for n in ast.walk(check)) if check.args.args else False
    if not asserts or not uses_candidate:
        raise Rejected("check(candidate) must assert on calls of candidate")
    docstring_end = function.body[0].end_lineno
    prompt = "".join(lines[: docstring_end])
    # Keep helpers between the function and the tests, drop a trailing `check(...)` call: the
    # program appends its own.
    test_nodes = [n for n in tree.body[tree.body.index(function) + 1:]
                  if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
                          and isinstance(n.value.func, ast.Name) and n.value.func.id == "check")]
    test = "\n".join(ast.get_source_segment(code, n, padded=False) for n in test_nodes) + "\n"
    return Exercise(
        task_id=task_id,
        prompt=prompt,
        canonical_solution="".join(lines[docstring_end: function.end_lineno]),
        test=test,
        entry_point=entry_point,
    )


def check_exercises(exercises: list[Exercise], *, timeout_s: float = 10.0, memory_mb: int = 1024,
                    unsafe_no_sandbox: bool = False) -> list[SandboxResult]:
    """Runs each exercise's solution against its own tests in the sandbox; results in order."""
    return run_programs([e.program() for e in exercises], timeout_s=timeout_s, memory_mb=memory_mb,
                        unsafe_no_sandbox=unsafe_no_sandbox)


class ExerciseValidator:
    """The `process` hook for exercises: parse, then run in the sandbox; keep only passing ones."""

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 1024, unsafe_no_sandbox: bool = False):
        self.timeout_s, self.memory_mb, self.unsafe_no_sandbox = timeout_s, memory_mb, unsafe_no_sandbox

    def __call__(self, request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
        if response.truncated:
            raise Rejected(f"truncated at max_tokens={request.max_tokens}")
        exercise = parse_exercise(response.text, request.meta["function_name"], task_id=request.id)
        (result,) = check_exercises([exercise], timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                                    unsafe_no_sandbox=self.unsafe_no_sandbox)
        if not result.passed:
            detail = f": {result.detail.strip()[-300:]}" if result.detail.strip() else ""
            raise Rejected(f"solution fails its own tests ({result.status}){detail}")
        return {**exercise.to_dict(), "meta": request.meta, "model": response.model}


# ---------------------------------------------------------------------------------------------
# The whole stage


def synthesize(
    kind: str,
    *,
    count: int,
    out_path: str | Path,
    failures_path: str | Path,
    client: ClientConfig,
    prompts_path: str | Path | None = None,
    seed: int = 0,
    api: str = "chat",
    max_tokens: int = 1024,
    temperature: float = 1.0,
    top_p: float = 1.0,
    keep_truncated: bool = False,
    sandbox_timeout_s: float = 10.0,
    sandbox_memory_mb: int = 1024,
    unsafe_no_sandbox: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
) -> RunStats:
    if count < 1:
        raise UserError(f"count must be at least 1, got {count}")
    if api not in ("chat", "completion"):
        raise UserError(f"api must be 'chat' or 'completion', got {api!r}")
    space = load_prompt_space(prompts_path or PROMPTS_DIR / f"{kind}.yaml", kind)
    # A generator: a run of millions of prompts never holds them all in memory.
    requests = build_requests(sample_prompts(space, kind, count, seed), api=api, max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p)
    if kind == "exercises":
        if not unsafe_no_sandbox:
            check_sandbox()  # fail before any request is paid for
        process = ExerciseValidator(timeout_s=sandbox_timeout_s, memory_mb=sandbox_memory_mb,
                                    unsafe_no_sandbox=unsafe_no_sandbox)
    else:
        def process(request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
            return textbook_record(request, response, keep_truncated=keep_truncated)
    return run_requests(requests, out_path, failures_path, client, process=process,
                        retry_failed=retry_failed, progress=progress, total=count)


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--count", type=int, required=True, help="number of prompts to sample")
    parser.add_argument("--out", required=True, help="output JSONL (appended to; a rerun resumes)")
    parser.add_argument("--failures", help="failure log JSONL (default: OUT with .failures.jsonl)")
    parser.add_argument("--prompts", help="prompt YAML (default: data_tools/prompts/KIND.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt sampling")
    parser.add_argument("--api", choices=("chat", "completion"), default="chat")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--keep-truncated", action="store_true", help="keep textbooks cut at --max-tokens")
    parser.add_argument("--sandbox-timeout", type=float, default=10.0, help="seconds per exercise run")
    parser.add_argument("--sandbox-memory-mb", type=int, default=1024)
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run model-written exercises WITHOUT isolation (only where bwrap cannot run)")
    parser.add_argument("--retry-failed", action="store_true", help="retry the ids in the failure log")
    parser.add_argument("--no-progress", action="store_true")
    add_client_arguments(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    failures = Path(args.failures) if args.failures else out.with_name(out.name.removesuffix(".jsonl") + ".failures.jsonl")
    stats = synthesize(
        args.kind, count=args.count, out_path=out, failures_path=failures, client=client_config_from_args(args),
        prompts_path=args.prompts, seed=args.seed, api=args.api, max_tokens=args.max_tokens,
        temperature=args.temperature, top_p=args.top_p, keep_truncated=args.keep_truncated,
        sandbox_timeout_s=args.sandbox_timeout, sandbox_memory_mb=args.sandbox_memory_mb,
        unsafe_no_sandbox=args.unsafe_no_sandbox, retry_failed=args.retry_failed, progress=not args.no_progress,
    )
    print(json.dumps({"kind": args.kind, "out": str(out), "failures": str(failures), **stats.to_dict()}))
    if stats.failed and not stats.succeeded and not stats.rejected:
        # no answer at all (rejected answers are the validator doing its job)
        print(f"error: every request failed (reasons in {failures}); check the endpoint, model and key",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
