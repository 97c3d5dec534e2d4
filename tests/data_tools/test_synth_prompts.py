"""The prompt space of a synthesis run: prompt files checked, sampling seeded and without repeats."""

import re

import pytest

from data_tools.synth_prompts import PROMPTS_DIR, load_prompt_space, prompt_plan, repeat_warning, sample_prompts


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
