"""Synthetic exercises: answers parsed into HumanEval's shape, run in the sandbox, near duplicates dropped."""

import re
from dataclasses import replace

import pytest

from data_tools.executors import ExecutorOptions
from data_tools.llm import ClientConfig, LLMRequest, LLMResponse, Rejected
from data_tools.synth_exercises import ExerciseValidator, check_exercises, parse_exercise
from data_tools.synth_prompts import PROMPTS_DIR, load_prompt_space, prompt_plan, sample_prompts
from data_tools.synth_run import SynthConfig, synthesize
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI

FENCE = "`" * 3

GOOD_ANSWER = f"""Here is the exercise.

{FENCE}python
import string


def count_vowels(text: str) -> int:
    \"\"\"Count the vowels in text.

    >>> count_vowels("hello")
    2
    \"\"\"
    return sum(1 for ch in text.lower() if ch in "aeiou")
{FENCE}

{FENCE}python
def check(candidate):
    assert candidate("hello") == 2
    assert candidate("") == 0
    assert candidate("AEIOU") == 5

check(count_vowels)
{FENCE}
"""


def answer_with(solution: str, name: str = "count_vowels") -> str:
    return GOOD_ANSWER.replace('return sum(1 for ch in text.lower() if ch in "aeiou")', solution).replace(
        "count_vowels", name
    )


def own_answer(
    name: str, solution: str = 'return sum(1 for ch in text.lower() if ch in "aeiou")', words: list[str] | None = None
) -> str:
    """An exercise whose tests are its own: words made from the function name, so that no two names share them."""
    words = words or [f"{name}{'x' * i}" for i in range(6)]
    asserts = "\n".join(f"    assert candidate({w!r}) == {sum(ch in 'aeiou' for ch in w)}" for w in words)
    return (
        f'{FENCE}python\ndef {name}(text: str) -> int:\n    """Count the vowels in text."""\n    {solution}\n'
        f"{FENCE}\n\n{FENCE}python\ndef check(candidate):\n{asserts}\n{FENCE}\n"
    )


def test_an_answer_splits_into_humaneval_fields():
    exercise = parse_exercise(GOOD_ANSWER, "count_vowels", task_id="t1")
    assert exercise.prompt.startswith("import string\n") and exercise.prompt.rstrip().endswith('"""')
    assert exercise.canonical_solution.strip() == 'return sum(1 for ch in text.lower() if ch in "aeiou")'
    assert exercise.test.startswith("def check(candidate):") and "check(count_vowels)" not in exercise.test
    assert exercise.entry_point == "count_vowels"
    namespace: dict = {}
    exec(exercise.program(), namespace)  # trusted, hand-written: the program runs to its end


@pytest.mark.parametrize(
    "answer,reason",
    [
        ("def count_vowels(t): return 1", "no ```python code block"),
        (answer_with("return (("), "does not parse"),
        (answer_with("return 0", name="count_words"), "no top-level function named 'count_vowels'"),
        (
            GOOD_ANSWER.replace("Count the vowels in text.", "").replace(
                '    """\n\n    >>> count_vowels("hello")\n    2\n    """\n', ""
            ),
            "has no docstring",
        ),
        (GOOD_ANSWER.replace('    return sum(1 for ch in text.lower() if ch in "aeiou")\n', ""), "no solution body"),
        (GOOD_ANSWER.replace("def check(candidate)", "def test(candidate)"), "no `def check(candidate)`"),
        (GOOD_ANSWER.replace("assert candidate", "candidate"), "must assert on calls of candidate"),
    ],
)
def test_malformed_exercises_are_rejected_with_the_reason(answer, reason):
    with pytest.raises(Rejected, match=re.escape(reason)):
        parse_exercise(answer, "count_vowels", task_id="t")


def test_an_exercise_cut_at_max_tokens_is_rejected_before_it_runs():
    request = LLMRequest(id="e", prompt="p", max_tokens=64, meta={"function_name": "count_vowels"})
    response = LLMResponse(
        model="m", texts=[GOOD_ANSWER], finish_reasons=["length"], prompt_tokens=1, completion_tokens=64
    )
    with pytest.raises(Rejected, match="truncated at max_tokens=64"):
        ExerciseValidator()(request, response)


@pytest.mark.slow
def test_the_sandbox_keeps_correct_solutions_and_rejects_wrong_ones():
    exercises = [
        parse_exercise(answer, "count_vowels", task_id=str(i))
        for i, answer in enumerate(
            [
                GOOD_ANSWER,
                answer_with('return sum(1 for ch in text if ch in "aeiou")'),  # misses upper case
                answer_with("import sys; sys.exit(0)"),  # an early exit is not a pass
                answer_with("while True: pass"),
            ]
        )
    ]
    results = check_exercises(exercises, timeout_s=2.0)
    assert [r.status for r in results] == ["passed", "failed", "failed", "timed out"]
    assert "AssertionError" in results[1].detail


@pytest.mark.slow
def test_exercises_are_validated_before_they_are_written(tmp_path):
    def answer(prompt: str) -> str:  # a right solution for even verbs, a wrong one for the others
        name = re.search(r"must be named `(\w+)`", prompt).group(1)
        right = sum(map(ord, name)) % 2 == 0
        return own_answer(name) if right else own_answer(name, "return 2")

    with FakeOpenAI(answer=answer) as server:
        summary = synthesize(
            SynthConfig(
                "exercises",
                count=8,
                out=str(tmp_path / "ex.jsonl"),
                failures=str(tmp_path / "ex.f.jsonl"),
                client=ClientConfig(base_url=server.base_url, model="fake"),
                seed=3,
                no_progress=True,
            )
        )
    kept = read_jsonl(tmp_path / "ex.jsonl")
    failed = read_jsonl(tmp_path / "ex.f.jsonl")
    expected_kept = {r["id"] for r in kept if sum(map(ord, r["entry_point"])) % 2 == 0}
    assert len(kept) + len(failed) == 8 and kept and failed and {r["id"] for r in kept} == expected_kept
    assert all(f["reason"].startswith("rejected: solution fails its own tests (failed)") for f in failed)
    assert all(set(r) >= {"task_id", "prompt", "canonical_solution", "test", "entry_point", "meta"} for r in kept)
    assert summary["succeeded"] == len(kept) and summary["rejected"] == len(failed)


@pytest.mark.slow
@pytest.mark.parametrize("tasks", [1, 3])
def test_exercises_repeating_a_kept_solution_and_tests_are_dropped_with_the_reason_also_after_a_restart(
    tmp_path, tasks
):
    plan = prompt_plan(load_prompt_space(PROMPTS_DIR / "exercises.yaml", "exercises"), "exercises")
    names = [p.meta["function_name"] for p in sample_prompts(plan, 12, seed=5)]
    assert len(set(names)) == 12
    planted = {names[0], names[2], names[4], names[7], names[9]}  # three before the restart, two after
    shared_words = [f"shared{'x' * i}" for i in range(12)]

    def answer(prompt: str) -> str:  # the planted ones: the same tests plus one of their own (Jaccard ~0.9)
        name = re.search(r"must be named `(\w+)`", prompt).group(1)
        return own_answer(name, words=shared_words + [name]) if name in planted else own_answer(name)

    out, failures = tmp_path / "ex.jsonl", tmp_path / "ex.f.jsonl"
    with FakeOpenAI(answer=answer) as server:
        config = SynthConfig(
            "exercises",
            count=6,
            out=str(out),
            failures=str(failures),
            client=ClientConfig(base_url=server.base_url, model="fake"),
            seed=5,
            no_progress=True,
        )
        options = ExecutorOptions(tasks=tasks, workers=tasks)
        synthesize(config, options)
        first_kept = [r["entry_point"] for r in read_jsonl(out)]
        summary = synthesize(replace(config, count=12), options)
    kept = {r["entry_point"]: r["id"] for r in read_jsonl(out)}
    dropped = read_jsonl(failures)
    (original,) = planted & set(kept)
    # the earliest id is kept, before the restart as after it, whichever task asked for it
    assert original == names[0] and original in first_kept
    assert summary["near_duplicates_dropped"] == len(dropped) == 4 and summary["rejected"] == 4
    assert set(kept) == set(names) - planted | {original}
    assert sorted(f["meta"]["function_name"] for f in dropped) == sorted(planted - {original})
    for failure in dropped:
        assert re.fullmatch(
            rf"rejected: near-duplicate exercise: solution and tests repeat {kept[original]} "
            r"\(near, Jaccard 0\.\d+\)",
            failure["reason"],
        ), failure["reason"]
