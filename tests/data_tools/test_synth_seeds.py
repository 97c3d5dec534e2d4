import json
import re
import textwrap
from collections import Counter

import pytest

from data_tools.llm import ClientConfig
from data_tools.quality.documents import Document
from data_tools.synth_prompts import plan_for, sample_prompts
from data_tools.synth_run import SynthConfig, synthesize
from data_tools.synth_report import ReportOptions, diversity_report
from data_tools.synth_seeds import SeedOptions, document_seeds, identifiers, load_seeds, snippets
from tests.conftest import read_jsonl
from tests.data_tools.fake_openai import FakeOpenAI

MODULE = textwrap.dedent("""\
    import os


    def tiny(x):
        return x


    @cache
    def parse_header(line: str) -> dict:
        key, _, value = line.partition(":")
        result = {key.strip(): value.strip()}
        return result


    class Inventory:
        def add_item(self, name, quantity):
            self.items[name] = self.items.get(name, 0) + quantity
            total_count = sum(self.items.values())
            return total_count
    """)


def write_code_corpus(path, files: int = 30) -> None:
    """Python files of four small functions each, every name and constant its own."""
    with open(path, "w") as f:
        for i in range(files):
            functions = "\n\n".join(
                f"def {verb}_{noun}_{i}(values_{i}, limit_{j}):\n"
                f"    kept_{i}_{j} = [v for v in values_{i} if v < limit_{j} + {i * 7 + j}]\n"
                f"    return {verb}_total_{j}(kept_{i}_{j})\n"
                for j, (verb, noun) in enumerate(
                    [("count", "items"), ("merge", "runs"), ("scale", "scores"), ("split", "words")]
                )
            )
            f.write(json.dumps({"id": f"repo/file_{i}.py", "text": functions}) + "\n")


def test_snippets_are_the_functions_and_methods_of_a_file_dedented_with_their_decorators():
    found = snippets(MODULE, SeedOptions(min_lines=3, max_lines=10))
    assert [(first, last) for first, last, _ in found] == [(8, 12), (16, 19)]
    assert found[0][2].startswith("@cache\ndef parse_header(line: str) -> dict:\n")
    assert found[1][2].startswith("def add_item(self, name, quantity):\n    self.items[name]")
    # tiny() is below min_lines; a max_lines of 4 leaves only the method
    assert [first for first, _, _ in snippets(MODULE, SeedOptions(min_lines=3, max_lines=4))] == [16]


def test_a_file_that_is_not_python_gives_line_windows():
    text = "\n".join(f"line {i} of some shell script {{" for i in range(10))
    found = snippets(text, SeedOptions(min_lines=3, max_lines=4))
    assert [(first, last) for first, last, _ in found] == [(1, 4), (5, 8)]  # the last two lines are too few


def test_identifiers_leave_out_builtins_keywords_private_and_short_names():
    assert identifiers(MODULE) == [
        "Inventory",
        "add_item",
        "cache",
        "get",
        "items",
        "key",
        "line",
        "name",
        "parse_header",
        "partition",
        "quantity",
        "result",
        "strip",
        "tiny",
        "total_count",
        "value",
        "values",
    ]
    assert identifiers("def broken(:\n") == []


def test_identifier_sets_depend_on_the_document_and_the_seed_only():
    document = Document("a.py", MODULE, {})
    options = SeedOptions(kinds=("identifiers",), identifiers_per_set=4)
    sets = [s.text for s in document_seeds(document, options, seed=0)]
    assert len(sets) == 4 and len({n for s in sets for n in s.split(", ")}) == 16
    assert sets == [s.text for s in document_seeds(document, options, seed=0)]
    assert sets != [s.text for s in document_seeds(document, options, seed=1)]


def test_seeds_are_drawn_reproducibly_from_the_corpus_and_repeats_kept_once(tmp_path):
    write_code_corpus(tmp_path / "code.jsonl", files=10)
    with open(tmp_path / "code.jsonl", "a") as f:  # a copy of file 0 under another name
        f.write(
            json.dumps(
                {
                    "id": "fork/file_0.py",
                    "text": json.loads((tmp_path / "code.jsonl").read_text().splitlines()[0])["text"],
                }
            )
            + "\n"
        )
    seeds = load_seeds([tmp_path / "code.jsonl"], SeedOptions(kinds=("snippet",)), seed=3)
    assert len(seeds) == 40 and not any(s.source == "fork/file_0.py" for s in seeds)
    assert seeds == load_seeds([tmp_path / "code.jsonl"], SeedOptions(kinds=("snippet",)), seed=3)
    assert seeds[0].meta() == {"seed_kind": "snippet", "seed_source": "repo/file_0.py", "seed_where": "lines 1-3"}
    pooled = load_seeds([tmp_path / "code.jsonl"], SeedOptions(pool=3), seed=3)
    assert len({s.source for s in pooled}) == 3


def test_a_missing_or_seedless_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"seed corpus: input '.*nothing\.jsonl' matches no files.*pass --seed-corpus"):
        load_seeds([tmp_path / "nothing.jsonl"])
    (tmp_path / "prose.jsonl").write_text(json.dumps({"id": "a", "text": "just words"}) + "\n")
    with pytest.raises(ValueError, match="yields no snippet or identifiers seed"):
        load_seeds([tmp_path / "prose.jsonl"])


def test_a_malformed_seed_line_names_its_place_and_a_remedy_synth_offers(tmp_path):
    write_code_corpus(tmp_path / "code.jsonl", files=3)
    with open(tmp_path / "code.jsonl", "a") as f:
        f.write('{"id": "torn", "text": "def f(\n')
    with pytest.raises(ValueError) as raised:
        load_seeds([tmp_path / "code.jsonl"])
    message = str(raised.value)
    assert re.search(r"code\.jsonl:4: ", message) and "--seed-corpus" in message
    assert "--on-error" not in message  # synth has no such flag


@pytest.mark.slow
def test_2000_seed_conditioned_prompts_are_distinct_and_reproducible_from_the_seed(tmp_path):
    write_code_corpus(tmp_path / "code.jsonl", files=30)
    plan = plan_for("textbooks", seed_corpus=[str(tmp_path / "code.jsonl")], seed=7)
    assert plan.source == "seeds" and plan.capacity >= 2000
    planned = list(sample_prompts(plan, 2000, seed=7))
    with FakeOpenAI() as server:  # answers "answer to: PROMPT"
        summary = synthesize(
            SynthConfig(
                "textbooks",
                count=2000,
                out=str(tmp_path / "t.jsonl"),
                failures=str(tmp_path / "f.jsonl"),
                client=ClientConfig(base_url=server.base_url, model="fake", max_concurrency=32),
                seed_corpus=[str(tmp_path / "code.jsonl")],
                seed=7,
                no_progress=True,
            )
        )
    records = read_jsonl(tmp_path / "t.jsonl")
    assert summary["succeeded"] == 2000 and len(server.hits) == 2000
    assert len({hit.prompt for hit in server.hits}) == 2000
    assert {r["id"]: r["text"] for r in records} == {p.id: f"answer to: {p.user}" for p in planned}
    assert {r["meta"]["seed_kind"] for r in records} == {"snippet", "identifiers"}
    snippet = next(r for r in records if r["meta"]["seed_kind"] == "snippet")
    assert re.search(r"```python\ndef \w+_\d+\(values_\d+, limit_\d\):\n", snippet["text"])
    report = diversity_report([tmp_path / "t.jsonl"], tmp_path / "report", options=ReportOptions(embedder=None))
    assert report["prompts"] == {"with_prompt_hash": 2000, "distinct": 2000, "most_uses": 1}
    assert report["histograms"]["seed_kind"] == dict(Counter(r["meta"]["seed_kind"] for r in records).most_common())
    other_seed = {
        p.user
        for p in sample_prompts(plan_for("textbooks", seed_corpus=[str(tmp_path / "code.jsonl")], seed=8), 2000, seed=8)
    }
    assert len(other_seed) == 2000 and other_seed != {p.user for p in planned}
