"""Synthetic textbooks and exercises from an OpenAI-compatible endpoint (phi-1 paper, section 2.2).

    python -m data_tools.synth textbooks --count 1000 --out synth/textbooks.jsonl --base-url URL --model M
    python -m data_tools.synth exercises --count 1000 --out synth/exercises.jsonl --base-url URL --model M
    python -m data_tools.synth outline --out synth/outline.yaml --base-url URL --model M
    python -m data_tools.synth report --input synth/textbooks.jsonl --out-dir synth/report

The paper found that diversity has to be forced into the prompts, so every prompt is one point of a
prompt space, drawn with a seed and without replacement (no prompt repeats before all have been
used). Three spaces, each from YAML in data_tools/prompts/:
- hand-written lists (default): topics with subtopics, audiences, styles and, for exercises,
  concepts and function-name verbs/nouns; about a thousand textbook prompts;
- ``--outline FILE``: topic -> subtopic -> concept triples that the model itself expanded once
  (``outline``, data_tools.synth_outline), reviewable YAML;
- ``--seed-corpus [PATH ...]``: a code snippet or identifier set drawn from a corpus, by default
  the quality-filtered code shards (data_tools.synth_seeds); grows with the corpus.
The number of distinct prompts is printed before a run starts, with a warning when ``--count``
exceeds it by more than ``--warn-repeats``. ``report`` measures how diverse the outputs turned out
(data_tools.synth_report).

Exercises are HumanEval-shaped (signature + docstring, solution, `check(candidate)` tests) and are
kept only if they parse, their solution passes its own tests in the evaluation sandbox, and their
solution and tests do not nearly repeat an exercise with an earlier id (MinHash at the dedup stage's
settings); everything else goes to the failure log with the reason. Requests go through
data_tools.llm: a killed run resumes when rerun.

A run is split into ``--tasks`` tasks on the data stages' executors (``--executor local|slurm|ray``),
each asking for its own share of the ids, and merged into ``--out`` by a last one-task stage with a
per-task summary: data_tools.synth_run (which also holds ``stages()`` for the data recipe).
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import math
import random
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from data_tools.dedup import Deduplicator, DedupParams, exact_key, signature
from data_tools.executors import add_executor_arguments, executor_options_from_args
from data_tools.llm import (
    ClientConfig,
    LLMRequest,
    LLMResponse,
    Rejected,
    RunStats,
    add_client_arguments,
    client_config_from_args,
    run_requests,
    usage_of,
)
from data_tools.synth_seeds import DEFAULT_SEED_CORPUS, SEED_KINDS, Seed, SeedOptions, load_seeds
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
    outline_template: str | None = None  # for --outline; `template` when absent
    seed_templates: dict[str, str] = field(default_factory=dict)  # for --seed-corpus, by seed kind
    instructions: str = ""  # appended to every template
    path: str = ""

    def template_for(self, source: str, seed_kind: str = "") -> tuple[str, str]:
        """(where it is in the YAML, the full template) for a prompt source."""
        if source == "outline" and self.outline_template is not None:
            key, text = "outline_template", self.outline_template
        elif source == "seeds":
            if seed_kind not in self.seed_templates:
                raise UserError(f"{self.path}: no 'seed_templates.{seed_kind}' for seed-conditioned prompts")
            key, text = f"seed_templates.{seed_kind}", self.seed_templates[seed_kind]
        else:
            key, text = "template", self.template
        return key, f"{text.rstrip()}\n{self.instructions}" if self.instructions else text


# The placeholders each prompt source fills; exercises add the forced function name.
SOURCE_FIELDS = {
    "lists": {"topic", "subtopic", "audience", "style"},
    "outline": {"topic", "subtopic", "concept", "audience", "style"},
    "seeds": {"audience", "style"},  # and the seed itself, in the placeholder named after its kind
}


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(space: PromptSpace, kind: str, source: str, seed_kind: str = "") -> str:
    """The template a prompt source uses, checked: only known placeholders, and every field that
    makes prompts differ is used (a source whose choices never reach the prompt repeats it)."""
    key, template = space.template_for(source, seed_kind)
    fields = SOURCE_FIELDS[source] | ({seed_kind} if source == "seeds" else set())
    if kind == "exercises":
        fields = fields | {"function_name"} | ({"concept"} if source == "lists" else set())
    try:
        template.format(**{name: "x" for name in fields})
        used = template_fields(template)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"{space.path}: '{key}' uses an unknown or malformed placeholder ({exc}); "
            f"available: {', '.join(sorted(fields))}"
        ) from None
    unused = fields - used
    if unused:
        raise UserError(
            f"{space.path}: '{key}' does not use {{{'}, {'.join(sorted(unused))}}}: prompts that differ "
            "only there would be sent as the same text"
        )
    return template


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

    def optional_string(key: str, where: Any = data, label: str = "") -> str | None:
        value = where.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UserError(f"{path}: '{label}{key}' must be a non-empty string")
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
    seed_templates = data.get("seed_templates") or {}
    if not isinstance(seed_templates, dict) or set(seed_templates) - set(SEED_KINDS):
        raise UserError(f"{path}: 'seed_templates' must map {' and/or '.join(SEED_KINDS)} to templates")
    for seed_kind in seed_templates:
        optional_string(seed_kind, seed_templates, "seed_templates.")
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
        outline_template=optional_string("outline_template"),
        seed_templates=dict(seed_templates),
        instructions=(optional_string("instructions") or "").strip("\n"),
        path=str(path),
    )
    check_template(space, kind, "lists")
    if space.outline_template is not None:
        check_template(space, kind, "outline")
    for seed_kind in space.seed_templates:
        check_template(space, kind, "seeds", seed_kind)
    return space


@dataclass
class Axis:
    """One independent choice of a prompt: its name (for the count) and the fields each value fills."""

    name: str
    values: list[dict[str, str]]

    def __post_init__(self) -> None:
        # A value listed twice would be counted twice and drawn twice: keep the first.
        firsts: dict[tuple, dict[str, str]] = {}
        for value in self.values:
            firsts.setdefault(tuple(sorted(value.items())), value)
        self.values = list(firsts.values())


@dataclass
class PromptPlan:
    """Every prompt a configuration can produce: the product of its axes, numbered 0..capacity-1."""

    kind: str
    source: str  # "lists", "outline" or "seeds"
    system: str
    templates: dict[str, str]  # by seed kind for "seeds", else one under ""
    axes: list[Axis]

    @property
    def capacity(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes)

    def describe(self) -> str:
        factors = " x ".join(f"{len(axis.values):,} {axis.name}" for axis in self.axes)
        return f"{self.capacity:,} distinct {self.kind} prompts ({self.source}: {factors})"

    def prompt(self, number: int) -> tuple[str, dict[str, Any]]:
        """The user prompt and the meta of prompt ``number`` (mixed-radix digits pick each axis's value)."""
        fields: dict[str, Any] = {}
        for axis in self.axes:
            number, digit = divmod(number, len(axis.values))
            fields.update(axis.values[digit])
        template = self.templates[fields.get("seed_kind", "")]
        # The snippet is in the prompt; the record keeps where it came from, not a second copy.
        return template.format(**fields), {k: v for k, v in fields.items() if k != "snippet"}


def prompt_plan(
    space: PromptSpace, kind: str, *, outline: list[tuple[str, str, str]] | None = None, seeds: list[Seed] | None = None
) -> PromptPlan:
    """The prompt space of a run: hand-written lists (default), a generated outline, or corpus seeds."""
    if outline is not None and seeds is not None:
        raise UserError("give either an outline or a seed corpus, not both")
    if seeds is not None:
        kinds = sorted({s.kind for s in seeds})
        templates = {k: check_template(space, kind, "seeds", k) for k in kinds}
        values = [{**s.meta(), s.kind: s.text} for s in seeds]
        axes, source = [Axis("seeds", values)], "seeds"
    elif outline is not None:
        if not outline:
            raise UserError("the outline holds no concept: expand it first (python -m data_tools.synth outline)")
        templates = {"": check_template(space, kind, "outline")}
        axes = [Axis("topic/subtopic/concept", [dict(topic=t, subtopic=s, concept=c) for t, s, c in outline])]
        source = "outline"
    else:
        templates = {"": check_template(space, kind, "lists")}
        axes = [Axis("topic/subtopic", [dict(topic=t, subtopic=s) for t, subs in space.topics for s in subs])]
        source = "lists"
    axes += [
        Axis("audiences", [{"audience": a} for a in space.audiences]),
        Axis("styles", [{"style": s} for s in space.styles]),
    ]
    if kind == "exercises":
        if source == "lists":
            axes.append(Axis("concepts", [{"concept": c} for c in space.concepts]))
        axes.append(
            Axis(
                "function names",
                [{"function_name": f"{v}_{n}"} for v in space.function_name_verbs for n in space.function_name_nouns],
            )
        )
    return PromptPlan(kind=kind, source=source, system=space.system, templates=templates, axes=axes)


@dataclass
class SynthPrompt:
    id: str
    system: str
    user: str
    meta: dict[str, Any]


def prompt_numbers(capacity: int, count: int, seed: int) -> Iterator[int]:
    """``count`` prompt numbers drawn without replacement, so that no prompt repeats before every
    prompt of the space has been used once (then a fresh pass). A lazy Fisher-Yates shuffle: memory
    grows with ``count``, not with the space, and a larger ``count`` extends a smaller one's sequence,
    so a rerun asking for more keeps every earlier id."""
    rng = random.Random(seed)
    produced = 0
    while produced < count:
        moved: dict[int, int] = {}  # the shuffled positions that no longer hold their own number
        for i in range(min(capacity, count - produced)):
            j = i + rng.randrange(capacity - i)
            yield moved.get(j, j)
            moved[j] = moved.get(i, i)
        produced += min(capacity, count - produced)


def sample_prompts(plan: PromptPlan, count: int, seed: int, *, rank: int = 0, tasks: int = 1) -> Iterator[SynthPrompt]:
    """The same (plan, count, seed) always yields the same prompts with the same ids.

    Task ``rank`` of ``tasks`` gets the prompts whose index i has ``i % tasks == rank``: every task
    draws the whole sequence (cheap next to one request) and formats only its own. Striding rather
    than contiguous ranges keeps an id in the same task when a rerun asks for a larger ``count``, so
    the task's files that already settle it are the ones it reads."""
    if count < 1:
        raise UserError(f"count must be at least 1, got {count}")
    if not 0 <= rank < tasks:
        raise UserError(f"task {rank} of {tasks} does not exist: give 0 <= rank < tasks")
    for index, number in enumerate(prompt_numbers(plan.capacity, count, seed)):
        if index % tasks != rank:
            continue
        user, meta = plan.prompt(number)
        # The index keeps equal prompts apart; the hash keeps a changed prompt file from reusing ids
        # and tells the diversity report which records share a prompt.
        digest = hashlib.sha1(f"{plan.system}\n{user}".encode()).hexdigest()[:10]
        meta["prompt_sha1"] = digest
        yield SynthPrompt(id=f"{plan.kind}-{index:08d}-{digest}", system=plan.system, user=user, meta=meta)


def prompt_index(prompt_id: str) -> int:
    """The index in the sampled sequence of an id ``sample_prompts`` made (``KIND-INDEX-HASH``)."""
    try:
        return int(prompt_id.split("-")[1])
    except (IndexError, ValueError):
        raise UserError(
            f"{prompt_id!r} is no synthesis id (KIND-INDEX-HASH): was the file written by another tool?"
        ) from None


def repeat_warning(plan: PromptPlan, count: int, factor: float) -> str | None:
    """A warning when ``count`` exceeds the distinct prompts by more than ``factor``, else None."""
    if count <= plan.capacity * factor:
        return None
    return (
        f"warning: {count:,} requested is {count / plan.capacity:.1f}x the {plan.capacity:,} distinct prompts "
        f"(more than --warn-repeats {factor:g}): each prompt is sent up to {math.ceil(count / plan.capacity)} "
        "times and diversity rests on sampling alone; expand an outline (--outline) or draw seeds from a "
        "corpus (--seed-corpus)"
    )


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
    return {
        "text": text,
        "meta": request.meta,
        "model": response.model,
        "usage": usage_of(response),
    }


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
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "canonical_solution": self.canonical_solution,
            "test": self.test,
            "entry_point": self.entry_point,
            "text": self.prompt + self.canonical_solution,
        }


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
    uses_candidate = (
        any(isinstance(n, ast.Name) and n.id == check.args.args[0].arg for n in ast.walk(check))
        if check.args.args
        else False
    )
    if not asserts or not uses_candidate:
        raise Rejected("check(candidate) must assert on calls of candidate")
    docstring_end = function.body[0].end_lineno
    prompt = "".join(lines[:docstring_end])
    # Keep helpers between the function and the tests, drop a trailing `check(...)` call: the
    # program appends its own.
    test_nodes = [
        n
        for n in tree.body[tree.body.index(function) + 1 :]
        if not (
            isinstance(n, ast.Expr)
            and isinstance(n.value, ast.Call)
            and isinstance(n.value.func, ast.Name)
            and n.value.func.id == "check"
        )
    ]
    test = "\n".join(ast.get_source_segment(code, n, padded=False) for n in test_nodes) + "\n"
    return Exercise(
        task_id=task_id,
        prompt=prompt,
        canonical_solution="".join(lines[docstring_end : function.end_lineno]),
        test=test,
        entry_point=entry_point,
    )


def check_exercises(
    exercises: list[Exercise], *, timeout_s: float = 10.0, memory_mb: int = 1024, unsafe_no_sandbox: bool = False
) -> list[SandboxResult]:
    """Runs each exercise's solution against its own tests in the sandbox; results in order."""
    return run_programs(
        [e.program() for e in exercises], timeout_s=timeout_s, memory_mb=memory_mb, unsafe_no_sandbox=unsafe_no_sandbox
    )


class SolutionDeduplicator:
    """Remembers the kept exercises' solution and tests and refuses one that nearly repeats them:
    MinHash at the dedup stage's settings, so "near duplicate" means the same thing in both places.
    The first exercise checked is the one kept: the merge checks them in id order."""

    def __init__(self, params: DedupParams = DedupParams()):
        self.params = params
        self._dedup = Deduplicator(params)

    @staticmethod
    def text(solution: str, test: str) -> str:
        return f"{solution}\n{test}"

    def check(self, exercise_id: str, solution: str, test: str) -> dict[str, Any] | None:
        """None when the exercise is new (and now remembered), else the dedup stage's verdict."""
        text = self.text(solution, test)
        key, sig = exact_key(text), signature(text, self.params.num_perm, self.params.ngram)
        return self._dedup.check(exercise_id, key, sig)

    def reason(self, verdict: dict[str, Any]) -> str:
        """The failure log's reason for an exercise :meth:`check` found a near duplicate of another."""
        return (
            f"rejected: {NEAR_DUPLICATE}: solution and tests repeat {verdict['duplicate_of']} "
            f"({verdict['reason']}, Jaccard {verdict['jaccard']})"
        )


class ExerciseValidator:
    """The `process` hook for exercises: parse and run in the sandbox; keep only passing ones. Near
    duplicates are dropped when the tasks' files are merged (data_tools.synth_run), in id order, so
    that which one is kept does not depend on the task count or on which answer came first."""

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 1024, unsafe_no_sandbox: bool = False):
        self.timeout_s, self.memory_mb, self.unsafe_no_sandbox = timeout_s, memory_mb, unsafe_no_sandbox

    def __call__(self, request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
        if response.truncated:
            raise Rejected(f"truncated at max_tokens={request.max_tokens}")
        exercise = parse_exercise(response.text, request.meta["function_name"], task_id=request.id)
        (result,) = check_exercises(
            [exercise], timeout_s=self.timeout_s, memory_mb=self.memory_mb, unsafe_no_sandbox=self.unsafe_no_sandbox
        )
        if not result.passed:
            detail = f": {result.detail.strip()[-300:]}" if result.detail.strip() else ""
            raise Rejected(f"solution fails its own tests ({result.status}){detail}")
        return {**exercise.to_dict(), "meta": request.meta, "model": response.model, "usage": usage_of(response)}


NEAR_DUPLICATE = "near-duplicate exercise"


# ---------------------------------------------------------------------------------------------
# The whole stage


def plan_for(
    kind: str,
    *,
    prompts_path: str | Path | None = None,
    outline_path: str | Path | None = None,
    seed_corpus: list[str] | None = None,
    seed_options: SeedOptions = SeedOptions(),
    seed: int = 0,
) -> PromptPlan:
    """The prompt plan a run's options describe (what :func:`generate_task` samples from)."""
    space = load_prompt_space(prompts_path or PROMPTS_DIR / f"{kind}.yaml", kind)
    outline = seeds = None
    if outline_path is not None:
        from data_tools.synth_outline import load_outline

        outline = load_outline(outline_path)
    if seed_corpus is not None:
        missing = [k for k in seed_options.kinds if k not in space.seed_templates]
        if missing:
            raise UserError(
                f"{space.path}: no 'seed_templates.{missing[0]}': add one or choose --seed-kinds "
                f"among {', '.join(space.seed_templates) or 'none'}"
            )
        seeds = load_seeds(seed_corpus or [DEFAULT_SEED_CORPUS], seed_options, seed=seed)
    return prompt_plan(space, kind, outline=outline, seeds=seeds)


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


def failures_path_for(out: Path) -> Path:
    """OUT.jsonl -> OUT.failures.jsonl, where every synth run files what it did not keep."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".failures.jsonl")


def add_generation_arguments(parser: argparse.ArgumentParser, *, per_task: bool = False) -> None:
    parser.add_argument("--api", choices=("chat", "completion"), default="chat")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--retry-failed", action="store_true", help="retry the ids in the failure log")
    parser.add_argument("--no-progress", action="store_true")
    add_client_arguments(parser, per_task=per_task)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="kind", required=True)
    for kind in KINDS:
        sub = commands.add_parser(kind, help=f"generate {kind}")
        sub.add_argument("--count", type=int, required=True, help="number of prompts to sample")
        sub.add_argument(
            "--out",
            required=True,
            help="output JSONL, merged from the tasks' files in OUT.tasks/ (kept: a rerun resumes from them)",
        )
        sub.add_argument("--failures", help="merged failure log JSONL (default: OUT with .failures.jsonl)")
        sub.add_argument("--prompts", help="prompt YAML (default: data_tools/prompts/KIND.yaml)")
        sub.add_argument("--seed", type=int, default=0, help="seed of the prompt sampling (and of the seed pool)")
        source = sub.add_mutually_exclusive_group()
        source.add_argument(
            "--outline",
            help="draw topic/subtopic/concept from this outline YAML (written by `python -m data_tools.synth outline`)",
        )
        source.add_argument(
            "--seed-corpus",
            nargs="*",
            metavar="PATH",
            help="condition each prompt on a snippet or identifier set drawn from these corpus "
            f"files (no PATH: {DEFAULT_SEED_CORPUS}, the quality-filtered code)",
        )
        sub.add_argument("--seed-pool", type=int, default=SeedOptions.pool, help="documents drawn from the seed corpus")
        sub.add_argument("--seed-kinds", nargs="+", choices=SEED_KINDS, default=list(SEED_KINDS))
        sub.add_argument(
            "--warn-repeats",
            type=float,
            default=1.0,
            metavar="FACTOR",
            help="warn when --count exceeds the distinct prompts by more than FACTOR (default 1)",
        )
        sub.add_argument("--keep-truncated", action="store_true", help="keep textbooks cut at --max-tokens")
        sub.add_argument("--sandbox-timeout", type=float, default=10.0, help="seconds per exercise run")
        sub.add_argument("--sandbox-memory-mb", type=int, default=1024)
        sub.add_argument(
            "--unsafe-no-sandbox",
            action="store_true",
            help="run model-written exercises WITHOUT isolation (only where bwrap cannot run)",
        )
        sub.add_argument(
            "--keep-near-duplicates",
            action="store_true",
            help="keep exercises whose solution and tests nearly repeat a kept one's",
        )
        add_generation_arguments(sub, per_task=True)
        add_executor_arguments(sub)
    # Imported here because both modules build on this one.
    from data_tools.synth_outline import add_outline_arguments
    from data_tools.synth_report import add_report_arguments

    add_outline_arguments(commands.add_parser("outline", help="expand topics into subtopics and concepts (YAML)"))
    add_report_arguments(commands.add_parser("report", help="diversity report of generated JSONL"))
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "outline":
        from data_tools.synth_outline import run_outline_command

        return run_outline_command(args)
    if args.kind == "report":
        from data_tools.synth_report import run_report_command

        return run_report_command(args)
    from data_tools.synth_run import synthesize

    config = SynthConfig(
        kind=args.kind,
        count=args.count,
        out=args.out,
        failures=args.failures,
        prompts=args.prompts,
        seed=args.seed,
        outline=args.outline,
        seed_corpus=args.seed_corpus,
        seed_pool=args.seed_pool,
        seed_kinds=list(args.seed_kinds),
        warn_repeats=args.warn_repeats,
        keep_truncated=args.keep_truncated,
        sandbox_timeout=args.sandbox_timeout,
        sandbox_memory_mb=args.sandbox_memory_mb,
        unsafe_no_sandbox=args.unsafe_no_sandbox,
        keep_near_duplicates=args.keep_near_duplicates,
        api=args.api,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        retry_failed=args.retry_failed,
        no_progress=args.no_progress,
        client=client_config_from_args(args, check=False),  # checked with the rest by config.check()
    )
    options = executor_options_from_args(args)
    summary = synthesize(config, options)
    if summary is None:  # submitted to Slurm: the summary appears when its job has run
        return 0
    print(json.dumps(summary))
    if summary["failed"] and not summary["succeeded"] and not summary["rejected"]:
        # no answer at all (rejected answers are the validator doing its job)
        print(
            f"error: every request failed (reasons in {config.failures_path}); check the endpoint, model and key",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
