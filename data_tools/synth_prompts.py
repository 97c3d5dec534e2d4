"""The prompt space of a synthesis run and the sampling from it (data_tools.synth).

A prompt YAML (data_tools/prompts/KIND.yaml or ``--prompts``) is read into a ``PromptSpace`` and its
templates checked; ``prompt_plan`` makes the space of a run, hand-written lists, a generated outline
or corpus seeds, a ``PromptPlan``: the product of independent axes, every prompt a number.
``sample_prompts`` draws ``count`` of them with a seed and without replacement and gives each an id
``KIND-INDEX-HASH``; task ``rank`` of ``tasks`` gets every ``tasks``-th one.
"""

from __future__ import annotations

import hashlib
import math
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from data_tools.synth_seeds import DEFAULT_SEED_CORPUS, SEED_KINDS, Seed, SeedOptions, load_seeds
from megaphi.common.errors import UserError

KINDS = ("textbooks", "exercises")
PROMPTS_DIR = Path(__file__).parent / "prompts"


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
        from data_tools.synth_outline import load_outline  # here: synth_outline builds on this module

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
