import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from data_tools.executors import ExecutorOptions
from data_tools.llm import ClientConfig, LLMRequest, LLMResponse, Rejected
from data_tools.synth import (
    PROMPTS_DIR,
    ExerciseValidator,
    check_exercises,
    load_prompt_space,
    main,
    parse_exercise,
    prompt_plan,
    repeat_warning,
    sample_prompts,
)
from data_tools.synth_run import SynthConfig, synthesize
from megaphi.common.net import free_port
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
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


def test_prompt_sampling_is_seeded_and_spreads_over_the_lists():
    space = load_prompt_space(PROMPTS_DIR / "exercises.yaml", "exercises")
    plan = prompt_plan(space, "exercises")
    first = list(sample_prompts(plan, 200, seed=1))
    assert [p.id for p in first] == [p.id for p in sample_prompts(plan, 200, seed=1)]
    assert [p.user for p in first] != [p.user for p in sample_prompts(plan, 200, seed=2)]
    assert len({p.id for p in first}) == 200 and len({p.user for p in first}) == 200
    assert {p.meta["topic"] for p in first} == {name for name, _ in space.topics}
    assert len({p.meta["function_name"] for p in first}) > 50
    for p in first[:20]:
        assert f"`{p.meta['function_name']}`" in p.user and p.meta["concept"] in p.user


def test_textbook_prompts_use_the_default_yaml():
    space = load_prompt_space(PROMPTS_DIR / "textbooks.yaml", "textbooks")
    (prompt,) = sample_prompts(prompt_plan(space, "textbooks"), 1, seed=0)
    assert prompt.meta["subtopic"] in prompt.user and prompt.meta["audience"] in prompt.user
    assert "function_name" not in prompt.meta and prompt.meta["prompt_sha1"] in prompt.id


def test_the_prompt_count_is_the_product_of_the_lists_and_no_prompt_repeats_before_all_are_used():
    space = load_prompt_space(PROMPTS_DIR / "textbooks.yaml", "textbooks")
    plan = prompt_plan(space, "textbooks")
    pairs = sum(len(subtopics) for _, subtopics in space.topics)
    assert plan.capacity == pairs * len(space.audiences) * len(space.styles)
    assert plan.describe().startswith(f"{plan.capacity:,} distinct textbooks prompts (lists: {pairs} topic/subtopic x ")
    prompts = [p.user for p in sample_prompts(plan, 2 * plan.capacity + 5, seed=0)]
    first_pass, second_pass = prompts[: plan.capacity], prompts[plan.capacity : 2 * plan.capacity]
    assert len(set(first_pass)) == plan.capacity and set(second_pass) == set(first_pass)
    assert repeat_warning(plan, plan.capacity, 1.0) is None and repeat_warning(plan, 2 * plan.capacity, 2.0) is None
    warning = repeat_warning(plan, 500_000, 1.0)
    assert warning.startswith(
        f"warning: 500,000 requested is {500_000 / plan.capacity:.1f}x the {plan.capacity:,} "
        "distinct prompts (more than --warn-repeats 1)"
    )


def test_the_run_prints_its_prompt_count_before_asking_and_warns_when_count_exceeds_it(tmp_path, capsys):
    prompts = tmp_path / "small.yaml"
    prompts.write_text(
        "system: s\ntemplate: '{topic} {subtopic} {audience} {style}'\n"
        "topics: [{name: a, subtopics: [b, c]}]\naudiences: [x, x]\nstyles: [y]\n"
    )  # x once
    with FakeOpenAI(lambda prompt, attempt: "400") as server:
        code = main(
            [
                "textbooks",
                "--count",
                "6",
                "--warn-repeats",
                "2.5",
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "t.jsonl"),
                "--base-url",
                server.base_url,
                "--max-attempts",
                "1",
                "--no-progress",
            ]
        )
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(server.hits) == 6
    assert err[0] == (
        "prompt space: 2 distinct textbooks prompts (lists: 2 topic/subtopic x 1 audiences x 1 styles); 6 requested"
    )
    assert err[1].startswith(
        "warning: 6 requested is 3.0x the 2 distinct prompts (more than --warn-repeats 2.5): "
        "each prompt is sent up to 3 times"
    )


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("system: s\ntemplate: t\ntopics: []\n", "'topics' must be a non-empty list"),
        ("system: s\ntemplate: t\ntopics: [{name: a, subtopics: [b]}]\nstyles: [x]\n", "'audiences' must be"),
        (
            "system: s\ntemplate: '{colour}'\ntopics: [{name: a, subtopics: [b]}]\naudiences: [x]\nstyles: [y]\n",
            "unknown or malformed placeholder",
        ),
        ("system: s\ntemplate: t\ntopics: [{name: a}]\naudiences: [x]\nstyles: [y]\n", "'topics[0].subtopics'"),
        (
            "system: s\ntemplate: '{topic} {subtopic} {style}'\ntopics: [{name: a, subtopics: [b]}]\naudiences: [x]\n"
            "styles: [y]\n",
            "'template' does not use {audience}: prompts that differ only there would be sent as the same",
        ),
        (
            "system: s\ntemplate: '{topic} {subtopic} {audience} {style}'\noutline_template: '{topic} {audience} {style}'\n"
            "topics: [{name: a, subtopics: [b]}]\naudiences: [x]\nstyles: [y]\n",
            "'outline_template' does not use {concept}, {subtopic}",
        ),
        (
            "system: s\ntemplate: '{topic} {subtopic} {audience} {style}'\nseed_templates: {docs: '{docs}'}\n"
            "topics: [{name: a, subtopics: [b]}]\naudiences: [x]\nstyles: [y]\n",
            "'seed_templates' must map snippet and/or identifiers to templates",
        ),
    ],
)
def test_a_broken_prompt_file_is_an_error_naming_the_field(tmp_path, yaml_text, message):
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_prompt_space(path, "textbooks")


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


def test_truncated_textbooks_are_rejected_unless_kept(tmp_path):
    with FakeOpenAI(lambda prompt, attempt: "length") as server:
        client = ClientConfig(base_url=server.base_url, model="fake", max_attempts=1)
        summary = synthesize(
            SynthConfig(
                "textbooks", count=2, out=str(tmp_path / "a.jsonl"), failures=str(tmp_path / "a.f.jsonl"), client=client
            )
        )
        kept = synthesize(
            SynthConfig(
                "textbooks",
                count=2,
                out=str(tmp_path / "b.jsonl"),
                failures=str(tmp_path / "b.f.jsonl"),
                client=client,
                keep_truncated=True,
            )
        )
    assert summary["rejected"] == 2 and "truncated at max_tokens=1024" in (tmp_path / "a.f.jsonl").read_text()
    records = read_jsonl(tmp_path / "b.jsonl")
    assert kept["succeeded"] == 2 and all(r["text"].startswith("answer to: Write a section") for r in records)
    assert set(records[0]["meta"]) == {"topic", "subtopic", "audience", "style", "prompt_sha1"}


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


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    code = main(
        ["exercises", "--count", "0", "--out", str(tmp_path / "x.jsonl"), "--base-url", "http://127.0.0.1:9/v1"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: count must be at least 1, got 0"
    code = main(
        [
            "textbooks",
            "--count",
            "1",
            "--out",
            str(tmp_path / "x.jsonl"),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--prompts",
            str(tmp_path / "missing.yaml"),
        ]
    )
    assert code == 2 and "missing.yaml does not exist" in capsys.readouterr().err
    code = main(["textbooks", "--count", "1", "--out", str(tmp_path / "x.jsonl"), "--seed-pool", "5"])
    assert code == 2 and capsys.readouterr().err == (
        "error: --seed-pool and --seed-kinds shape seed-conditioned prompts: add --seed-corpus\n"
    )
    code = main(
        [
            "textbooks",
            "--count",
            "1",
            "--out",
            str(tmp_path / "x.jsonl"),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--seed-corpus",
            str(tmp_path / "none-*.jsonl"),
        ]
    )
    assert code == 2 and capsys.readouterr().err.startswith("error: seed corpus: input ")
    with pytest.raises(SystemExit):  # argparse: one prompt source at a time
        main(["textbooks", "--count", "1", "--out", str(tmp_path / "x.jsonl"), "--outline", "o.yaml", "--seed-corpus"])
    assert "argument --seed-corpus: not allowed with argument --outline" in capsys.readouterr().err


def test_cli_exits_1_when_no_request_got_an_answer(tmp_path, capsys):
    with FakeOpenAI(lambda prompt, attempt: "400") as server:
        code = main(
            [
                "textbooks",
                "--count",
                "2",
                "--out",
                str(tmp_path / "t.jsonl"),
                "--base-url",
                server.base_url,
                "--model",
                "fake",
                "--api-key",
                "x",
                "--no-progress",
            ]
        )
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: every request failed (reasons in ")
    assert len((tmp_path / "t.failures.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_generate_validate_write_runs_against_megaphi_serve_with_a_tiny_model(tmp_path, capsys):
    from tests.megaphi.tiny_phi import make_hf_phi, make_tokenizer

    model_dir = tmp_path / "tiny"
    make_tokenizer(model_dir)
    make_hf_phi(model_dir, tokenizer_dir=model_dir, max_position_embeddings=2048)
    port = free_port("127.0.0.1")
    server = subprocess.Popen(
        [sys.executable, "-m", "megaphi.serve", "--model", str(model_dir), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "megaphi.serve did not come up"
                time.sleep(0.2)
        code = main(
            [
                "exercises",
                "--count",
                "3",
                "--out",
                str(tmp_path / "ex.jsonl"),
                "--base-url",
                f"http://127.0.0.1:{port}/v1",
                "--model",
                "tiny",
                "--max-tokens",
                "24",
                "--no-progress",
            ]
        )
        assert code == 0
        textbooks = synthesize(
            SynthConfig(
                "textbooks",
                count=2,
                out=str(tmp_path / "tb.jsonl"),
                max_tokens=16,
                keep_truncated=True,
                client=ClientConfig(base_url=f"http://127.0.0.1:{port}/v1", model="tiny"),
                no_progress=True,
            )
        )
    finally:
        server.terminate()
        server.wait(30)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["requested"] == 3 and summary["rejected"] == 3 and summary["completion_tokens"] > 0
    # The random model writes garbage: every exercise is rejected, each with a reason, none kept.
    assert (tmp_path / "ex.jsonl").read_text() == ""
    failures = read_jsonl(tmp_path / "ex.failures.jsonl")
    assert len(failures) == 3 and all(f["reason"].startswith("rejected: ") and f["texts"] for f in failures)
    # Sampling may end a text at the end-of-text token before the cap; none runs past it.
    assert textbooks["succeeded"] == 2 and 2 <= textbooks["completion_tokens"] <= 2 * 16
    assert len(read_jsonl(tmp_path / "tb.jsonl")) == 2
