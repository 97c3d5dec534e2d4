"""Topic outlines expanded by the model itself: topic -> subtopics -> concepts, as reviewable YAML.

    python -m data_tools.synth outline --out data/outline.yaml --subtopics 20 --concepts 20 --base-url URL --model M
    python -m data_tools.synth textbooks --outline data/outline.yaml --count 100000 --out data/textbooks.jsonl ...

The topics come from a prompt YAML's ``topics`` (the textbook topics by default). Each topic is
asked once for ``--subtopics`` subtopics, then each subtopic once for ``--concepts`` concepts, all
through data_tools.llm: the answers are filed in ``OUT.answers.jsonl`` keyed by prompt, so a killed
run resumes where it stopped and no item is asked twice. The YAML is written from those answers
at the end; edit it by hand before use if you like (it is read back as it stands).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_tools.jsonl import iter_jsonl
from data_tools.llm import (
    ClientConfig,
    LLMRequest,
    LLMResponse,
    Rejected,
    RunStats,
    client_config_from_args,
    failures_path_for,
    run_requests,
)
from data_tools.synth_prompts import PROMPTS_DIR, SynthPrompt
from data_tools.synth_task import add_generation_arguments, build_requests
from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text

DEFAULT_OUTLINE_PROMPTS = PROMPTS_DIR / "outline.yaml"
LEVELS = ("subtopics", "concepts")
# "1. ", "2) ", "- ", "* ", "• " and the like in front of a list item
_BULLET = re.compile(r"^\s*(?:(?:[-*•]+|\(?\d+[.)]|[a-zA-Z][.)])\s+)+")


@dataclass
class OutlinePrompts:
    system: str
    subtopics_template: str  # {topic}, {count}
    concepts_template: str  # {topic}, {subtopic}, {count}


def load_outline_prompts(path: str | Path = DEFAULT_OUTLINE_PROMPTS) -> OutlinePrompts:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"outline prompt file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    fields = {
        "system": set(),
        "subtopics_template": {"topic", "count"},
        "concepts_template": {"topic", "subtopic", "count"},
    }
    for key, names in fields.items():
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}: '{key}' must be a non-empty string")
        try:
            value.format(**{name: "x" for name in names})
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(
                f"{path}: '{key}' uses an unknown or malformed placeholder ({exc}); "
                f"available: {', '.join(sorted(names)) or 'none'}"
            ) from None
    return OutlinePrompts(data["system"].strip(), data["subtopics_template"], data["concepts_template"])


def read_topics(path: str | Path) -> list[str]:
    """The topic names of a prompt YAML (``topics: [{name: ...}]`` or a list of strings)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"topics file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    topics = data.get("topics") if isinstance(data, dict) else None
    names = [t.get("name") if isinstance(t, dict) else t for t in topics] if isinstance(topics, list) else []
    stripped = [n.strip() for n in names if isinstance(n, str) and n.strip()]
    if not names or len(stripped) != len(names):
        raise UserError(f"{path}: 'topics' must be a non-empty list of names (or of {{name: ...}} mappings)")
    return list(dict.fromkeys(stripped))


def parse_list(text: str, limit: int) -> list[str]:
    """The items of a one-per-line answer: bullets, numbering, quotes and trailing dots stripped, headings
    (lines ending in ':') and case-insensitive repeats dropped, at most ``limit``."""
    items: dict[str, str] = {}
    for line in text.splitlines():
        item = _BULLET.sub("", line).strip().strip("\"'`*").rstrip(".").strip()
        if not item or item.endswith(":") or len(item) > 120:
            continue
        items.setdefault(item.casefold(), item)
    return list(items.values())[:limit]


def _prompt(level: str, system: str, user: str, meta: dict[str, Any]) -> SynthPrompt:
    digest = hashlib.sha1(f"{system}\n{user}".encode()).hexdigest()[:12]
    return SynthPrompt(id=f"{level}-{digest}", system=system, user=user, meta={"level": level, **meta})


def subtopic_prompts(prompts: OutlinePrompts, topics: list[str], count: int) -> list[SynthPrompt]:
    return [
        _prompt("subtopics", prompts.system, prompts.subtopics_template.format(topic=t, count=count), {"topic": t})
        for t in topics
    ]


def concept_prompts(prompts: OutlinePrompts, pairs: list[tuple[str, str]], count: int) -> list[SynthPrompt]:
    return [
        _prompt(
            "concepts",
            prompts.system,
            prompts.concepts_template.format(topic=t, subtopic=s, count=count),
            {"topic": t, "subtopic": s},
        )
        for t, s in pairs
    ]


@dataclass
class OutlineStats:
    topics: int = 0
    subtopics: int = 0
    concepts: int = 0
    missing_topics: list[str] = field(default_factory=list)  # no subtopics yet (their request failed)
    missing_subtopics: int = 0  # no concepts yet
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # RunStats of each level

    def to_dict(self) -> dict[str, Any]:
        return {
            "topics": self.topics,
            "subtopics": self.subtopics,
            "concepts": self.concepts,
            "missing_topics": self.missing_topics,
            "missing_subtopics": self.missing_subtopics,
            **self.runs,
        }


def expand_outline(
    *,
    out_path: str | Path,
    client: ClientConfig,
    topics: list[str],
    subtopics: int = 12,
    concepts: int = 12,
    answers_path: str | Path | None = None,
    prompts_path: str | Path = DEFAULT_OUTLINE_PROMPTS,
    api: str = "chat",
    max_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    retry_failed: bool = False,
    progress: bool = True,
) -> OutlineStats:
    """Asks for the subtopics of each topic, then the concepts of each subtopic, and writes the outline YAML."""
    if subtopics < 1 or concepts < 1:
        raise UserError(f"--subtopics and --concepts must be at least 1, got {subtopics} and {concepts}")
    if not topics:
        raise UserError("no topics to expand")
    prompts = load_outline_prompts(prompts_path)
    out_path = Path(out_path)
    answers = Path(answers_path) if answers_path else outline_answers_path(out_path)
    failures = failures_path_for(answers)

    def ask(level: str, items: list[SynthPrompt], limit: int) -> RunStats:
        def process(request: LLMRequest, response: LLMResponse) -> dict[str, Any]:
            if response.truncated:
                raise Rejected(f"truncated at max_tokens={request.max_tokens} (raise --max-tokens)")
            listed = parse_list(response.text, limit)
            if not listed:
                raise Rejected("no list items in the answer")
            return {"items": listed, "meta": request.meta, "model": response.model}

        requests = build_requests(iter(items), api=api, max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        return run_requests(
            requests,
            answers,
            failures,
            client,
            process=process,
            retry_failed=retry_failed,
            progress=progress,
            total=len(items),
        )

    stats = OutlineStats(topics=len(topics))
    first = subtopic_prompts(prompts, topics, subtopics)
    stats.runs["subtopics_run"] = ask("subtopics", first, subtopics).to_dict()
    # The second level is built from the answers on disk, so a resumed run asks exactly what is missing.
    done = {r["id"]: r["items"] for r in _answers(answers)}
    pairs = [(p.meta["topic"], s) for p in first for s in done.get(p.id, [])]
    second = concept_prompts(prompts, pairs, concepts)
    stats.runs["concepts_run"] = ask("concepts", second, concepts).to_dict()
    done = {r["id"]: r["items"] for r in _answers(answers)}

    outline = []
    for prompt in first:
        if prompt.id not in done:
            stats.missing_topics.append(prompt.meta["topic"])
            continue
        entry = {"name": prompt.meta["topic"], "subtopics": []}
        for sub in (p for p in second if p.meta["topic"] == prompt.meta["topic"]):
            if sub.id not in done:
                stats.missing_subtopics += 1
                continue
            entry["subtopics"].append({"name": sub.meta["subtopic"], "concepts": done[sub.id]})
            stats.subtopics += 1
            stats.concepts += len(done[sub.id])
        if entry["subtopics"]:
            outline.append(entry)
    header = (
        f"# Outline expanded by `python -m data_tools.synth outline` with model {client.model!r};\n"
        f"# the model's answers are in {answers.name}. Review it, then pass it to\n"
        f"# `python -m data_tools.synth textbooks|exercises --outline {out_path.name}`. Rerunning `outline`\n"
        f"# rewrites this file from the answers: edit a copy.\n"
    )
    _write_atomically(
        out_path, header + yaml.safe_dump({"topics": outline}, sort_keys=False, allow_unicode=True, width=100)
    )
    return stats


def outline_answers_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name.removesuffix(".yaml").removesuffix(".yml") + ".answers.jsonl")


def _answers(path: Path) -> Iterator[dict[str, Any]]:
    # the command's own answer log: a damaged line is removed (that answer is then asked again)
    hint = "remove that line and rerun: its answer is asked again"
    return iter_jsonl(path, hint=hint) if path.exists() else iter(())


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def load_outline(path: str | Path) -> list[tuple[str, str, str]]:
    """The (topic, subtopic, concept) triples of an outline YAML, in file order, repeats dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"outline {path} does not exist: write it with `python -m data_tools.synth outline`")
    data = yaml.safe_load(path.read_text()) or {}
    topics = data.get("topics") if isinstance(data, dict) else None
    if not isinstance(topics, list) or not topics:
        raise UserError(f"{path}: 'topics' must be a non-empty list of {{name, subtopics}}")
    triples: dict[tuple[str, str, str], None] = {}
    for i, topic in enumerate(topics):
        if (
            not isinstance(topic, dict)
            or not isinstance(topic.get("name"), str)
            or not isinstance(topic.get("subtopics"), list)
        ):
            raise UserError(f"{path}: 'topics[{i}]' must be a mapping with a 'name' and a list of 'subtopics'")
        for j, sub in enumerate(topic["subtopics"]):
            concepts = sub.get("concepts") if isinstance(sub, dict) else None
            if (
                not isinstance(sub, dict)
                or not isinstance(sub.get("name"), str)
                or not isinstance(concepts, list)
                or not all(isinstance(c, str) and c for c in concepts)
            ):
                raise UserError(
                    f"{path}: 'topics[{i}].subtopics[{j}]' must be a mapping with a 'name' and a "
                    "list of 'concepts' (strings)"
                )
            for concept in concepts:
                triples.setdefault((topic["name"], sub["name"], concept), None)
    return list(triples)


def add_outline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="outline YAML (answers go to OUT.answers.jsonl; a rerun resumes)")
    parser.add_argument(
        "--topics-from",
        default=str(PROMPTS_DIR / "textbooks.yaml"),
        help="prompt YAML whose 'topics' are expanded (default: the textbook topics)",
    )
    parser.add_argument("--subtopics", type=int, default=12, help="subtopics asked for per topic")
    parser.add_argument("--concepts", type=int, default=12, help="concepts asked for per subtopic")
    parser.add_argument("--outline-prompts", default=str(DEFAULT_OUTLINE_PROMPTS), help="the prompts that expand them")
    add_generation_arguments(parser)
    parser.set_defaults(max_tokens=512)


def run_outline_command(args: argparse.Namespace) -> int:
    stats = expand_outline(
        out_path=args.out,
        client=client_config_from_args(args),
        topics=read_topics(args.topics_from),
        subtopics=args.subtopics,
        concepts=args.concepts,
        prompts_path=args.outline_prompts,
        api=args.api,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    print(json.dumps({"out": str(args.out), **stats.to_dict()}))
    if stats.missing_topics or stats.missing_subtopics:
        print(
            f"warning: {len(stats.missing_topics)} topics and {stats.missing_subtopics} subtopics are not expanded "
            f"(reasons in {failures_path_for(outline_answers_path(Path(args.out)))}); rerun with --retry-failed",
            file=sys.stderr,
        )
    return 0 if stats.concepts else 1
