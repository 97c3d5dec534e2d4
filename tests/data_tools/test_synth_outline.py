import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_tools.llm import ClientConfig
from data_tools.synth import main
from data_tools.synth_prompts import plan_for, sample_prompts
from data_tools.synth_outline import (
    concept_prompts,
    expand_outline,
    load_outline,
    load_outline_prompts,
    parse_list,
    subtopic_prompts,
)
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI, kill_once_filed

ROOT = Path(__file__).resolve().parents[2]


def outline_answer(prompt: str) -> str:
    """A deterministic model: "<topic> part i" subtopics, "<subtopic> idea i" concepts, numbered or bulleted."""
    if m := re.search(r'List (\d+) distinct subtopics of "([^"]+)"', prompt):
        return "Here they are:\n" + "\n".join(f"{i + 1}. {m[2]} part {i}" for i in range(int(m[1])))
    m = re.search(r'List (\d+) distinct, specific concepts.*section on "([^"]+)"', prompt, re.DOTALL)
    return "\n".join(f"- {m[2]} idea {i}" for i in range(int(m[1])))


def write_topics(path: Path, names: list[str]) -> Path:
    path.write_text(yaml.safe_dump({"topics": [{"name": n, "subtopics": ["x"]} for n in names]}))
    return path


def test_list_answers_lose_their_numbering_headings_and_repeats():
    answer = "Subtopics:\n1. Slicing lists.\n2) `Sorting`\n- slicing lists\n* **Heaps**\n\n• a) nested\n3. Heaps"
    assert parse_list(answer, limit=10) == ["Slicing lists", "Sorting", "Heaps", "nested"]
    assert parse_list(answer, limit=2) == ["Slicing lists", "Sorting"]
    assert parse_list("", limit=3) == []


def test_an_outline_reads_back_as_topic_subtopic_concept_triples(tmp_path):
    path = tmp_path / "outline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "topics": [
                    {
                        "name": "loops",
                        "subtopics": [
                            {"name": "while", "concepts": ["sentinels", "sentinels", "counters"]},
                            {"name": "for", "concepts": ["range"]},
                        ],
                    }
                ]
            }
        )
    )
    assert load_outline(path) == [
        ("loops", "while", "sentinels"),
        ("loops", "while", "counters"),
        ("loops", "for", "range"),
    ]
    path.write_text(yaml.safe_dump({"topics": [{"name": "loops", "subtopics": [{"name": "while"}]}]}))
    with pytest.raises(ValueError, match=r"'topics\[0\]\.subtopics\[0\]' must be a mapping with a 'name' and a list"):
        load_outline(path)
    with pytest.raises(ValueError, match="write it with `python -m data_tools.synth outline`"):
        load_outline(tmp_path / "missing.yaml")


def test_outline_expansion_writes_reviewable_yaml_that_textbook_prompts_draw_from(tmp_path, capsys):
    topics = ["control flow", "recursion"]
    with FakeOpenAI(answer=outline_answer) as server:
        stats = expand_outline(
            out_path=tmp_path / "outline.yaml",
            topics=topics,
            subtopics=3,
            concepts=4,
            client=ClientConfig(base_url=server.base_url, model="fake"),
            progress=False,
        )
    assert (stats.topics, stats.subtopics, stats.concepts) == (2, 6, 24) and len(server.hits) == 2 + 6
    text = (tmp_path / "outline.yaml").read_text()
    assert text.startswith("# Outline expanded by `python -m data_tools.synth outline` with model 'fake'")
    outline = yaml.safe_load(text)
    assert [t["name"] for t in outline["topics"]] == topics
    assert outline["topics"][1]["subtopics"][2] == {
        "name": "recursion part 2",
        "concepts": [f"recursion part 2 idea {i}" for i in range(4)],
    }
    answers = read_jsonl(tmp_path / "outline.answers.jsonl")
    assert len(answers) == 8 and {a["meta"]["level"] for a in answers} == {"subtopics", "concepts"}

    plan = plan_for("textbooks", outline_path=tmp_path / "outline.yaml")
    assert plan.capacity == 24 * 4 * 4
    assert plan.describe().startswith("384 distinct textbooks prompts (outline: 24 topic/subtopic/concept x 4 ")
    prompts = list(sample_prompts(plan, 50, seed=0))
    assert all(p.meta["concept"] in p.user and p.meta["subtopic"] in p.user for p in prompts)
    assert len({p.user for p in prompts}) == 50
    exercises = plan_for("exercises", outline_path=tmp_path / "outline.yaml")
    (exercise,) = sample_prompts(exercises, 1, seed=0)
    assert f"The exercise must use the concept: {exercise.meta['concept']}." in exercise.user


def test_an_outline_request_without_list_items_is_filed_as_a_failure(tmp_path, capsys):
    def answer(prompt: str) -> str:
        return "Here is the list:\n\n" if "recursion" in prompt else outline_answer(prompt)

    with FakeOpenAI(answer=answer) as server:
        code = main(
            [
                "outline",
                "--out",
                str(tmp_path / "o.yaml"),
                "--topics-from",
                str(write_topics(tmp_path / "t.yaml", ["loops", "recursion"])),
                "--subtopics",
                "2",
                "--concepts",
                "2",
                "--base-url",
                server.base_url,
                "--no-progress",
            ]
        )
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["missing_topics"] == ["recursion"]
    assert "warning: 1 topics and 0 subtopics are not expanded" in captured.err
    (failure,) = read_jsonl(tmp_path / "o.answers.failures.jsonl")
    assert failure["reason"] == "rejected: no list items in the answer" and failure["meta"]["topic"] == "recursion"
    assert [t["name"] for t in yaml.safe_load((tmp_path / "o.yaml").read_text())["topics"]] == ["loops"]


@pytest.mark.slow
def test_outline_expansion_survives_sigkill_and_asks_nothing_twice(tmp_path):
    topics = write_topics(tmp_path / "topics.yaml", ["loops", "strings", "recursion"])
    out = tmp_path / "outline.yaml"
    answers = tmp_path / "outline.answers.jsonl"
    with FakeOpenAI(answer=outline_answer, delay_s=0.2) as server:
        command = [
            sys.executable,
            "-m",
            "data_tools.synth",
            "outline",
            "--out",
            str(out),
            "--topics-from",
            str(topics),
            "--subtopics",
            "3",
            "--concepts",
            "4",
            "--base-url",
            server.base_url,
            "--model",
            "fake",
            "--max-concurrency",
            "1",
            "--no-progress",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # all 3 topics and some subtopics answered
        kill_once_filed(command, cwd=tmp_path, env=env, files=[answers], records=5)
        answered_before = {a["id"] for a in read_jsonl(answers)}
        hits_before = {prompt: len(faults) for prompt, faults in server.hits_by_prompt().items()}
        before = len(answered_before)
        assert before < 12 and not out.exists(), "the kill must land mid-run"

        finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr
    # The restarted run asks exactly the prompts whose answer was not filed: the one in flight at the
    # kill (its answer was lost with the process) and those never sent; an answered one never again.
    prompts = load_outline_prompts()
    first = subtopic_prompts(prompts, ["loops", "strings", "recursion"], 3)
    ids = {
        p.user: p.id
        for p in first
        + concept_prompts(
            prompts, [(t, f"{t} part {i}") for t in ["loops", "strings", "recursion"] for i in range(3)], 4
        )
    }
    hits = {prompt: len(faults) for prompt, faults in server.hits_by_prompt().items()}
    assert set(hits) == set(ids)
    for prompt, count in hits.items():
        assert count - hits_before.get(prompt, 0) == (0 if ids[prompt] in answered_before else 1), prompt
    assert sum(count > 1 for count in hits.values()) <= 1  # --max-concurrency 1: one request in flight
    summary = json.loads(finished.stdout)
    assert summary["subtopics_run"]["already_done"] == 3
    assert summary["concepts_run"]["already_done"] == before - 3 and summary["concepts_run"]["succeeded"] == 12 - before
    assert len(load_outline(out)) == 3 * 3 * 4
    assert len({a["id"] for a in read_jsonl(answers)}) == len(read_jsonl(answers)) == 12
