"""The data recipe: one YAML with a section per stage, dotted overrides, stages wired output -> input."""

import json
from pathlib import Path

import pytest

from data_tools.recipe import CommandStep, RecipeConfig, main, recipe_stages
from megaphi.common.errors import UserError
from megaphi.config import load_config
from tests.conftest import read_jsonl
from tests.data_tools.recipe_runs import outputs, small_recipe, train_tokenizer, write_extra

REPO = Path(__file__).resolve().parents[2]
STDLIB_RECIPE = REPO / "data_tools" / "recipes" / "stdlib.yaml"


def test_the_stdlib_recipe_loads_with_overrides_into_typed_sections():
    config = load_config(
        RecipeConfig,
        STDLIB_RECIPE,
        ["output_dir=/tmp/elsewhere", "executor.tasks=8", "executor.slurm.partition=cpu", "dedup.threshold=0.7"],
    )
    assert (config.output_dir, config.executor.tasks, config.executor.slurm.partition) == ("/tmp/elsewhere", 8, "cpu")
    assert config.dedup.threshold == 0.7 and config.corpus.min_bytes == 400
    assert config.decontaminate.benchmarks == ["humaneval"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("dedup.treshold=0.7", "dedup.treshold: unknown field; dedup accepts enabled, ngram, no_progress, num_perm"),
        ("executor.tasks=0", "executor.tasks 0: give at least 1 task"),
        ("executor.executor=slurm", "executor.executor slurm needs executor.slurm.partition"),
        ("corpus.lang=[cobol]", "corpus.lang: unknown language 'cobol'"),
        ("corpus.output_prefix=x", "corpus.output_prefix: unknown field; corpus accepts exclude, include, input"),
        ("dedup.input=[x]", "dedup.input: unknown field"),
        ("tokenize.vocab_size=0", "tokenize.vocab_size: must be > 0"),
    ],
)
def test_a_wrong_field_is_one_line_naming_it(override, message, capsys, tmp_path):
    assert main(["--config", str(STDLIB_RECIPE), f"output_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    with pytest.raises(UserError):
        load_config(RecipeConfig, STDLIB_RECIPE, [override])


def _first_step(stages, name):
    (stage,) = [s for s in stages if s.name == name]
    return stage.pipeline[0]


def test_each_stage_reads_what_the_one_before_wrote_under_the_output_dir(tmp_path):
    config = load_config(RecipeConfig, STDLIB_RECIPE, [f"output_dir={tmp_path}"])
    stages = recipe_stages(config)
    assert [s.logging_dir.removeprefix(f"{tmp_path}/") for s in stages] == [
        "corpus.datatrove/corpus",
        "corpus.datatrove/corpus-report",
        "quality.datatrove/quality-annotate",
        "quality.datatrove/quality-train",
        "quality.datatrove/quality-filter",
        "quality.datatrove/quality-report",
        "dedup.datatrove/signatures",
        "dedup.datatrove/buckets",
        "dedup.datatrove/clusters",
        "dedup.datatrove/filter",
        "dedup.datatrove/report",
        "clean.datatrove/decontaminate",
        "clean.datatrove/decontaminate-report",
        "tokenizer.datatrove/tokenizer",
        "code.datatrove/tokenize",
        "code.datatrove/merge",
        "code.datatrove/report",
    ]
    assert _first_step(stages, "quality-filter").inputs == [f"{tmp_path}/corpus-*.jsonl"]
    assert _first_step(stages, "signatures").inputs == [f"{tmp_path}/quality-*.jsonl"]
    assert _first_step(stages, "decontaminate").inputs == [f"{tmp_path}/dedup-*.jsonl"]
    assert _first_step(stages, "tokenize").reader.inputs == [f"{tmp_path}/clean-*.jsonl"]
    train = _first_step(stages, "quality-train")
    assert (
        isinstance(train, CommandStep) and train.argv[train.argv.index("--out") + 1] == f"{tmp_path}/quality.classifier"
    )
    assert stages[4].pipeline[1].classifier_dir == f"{tmp_path}/quality.classifier"
    tokenizer = _first_step(stages, "tokenizer")
    assert tokenizer.argv[tokenizer.argv.index("--input") + 1] == f"{tmp_path}/clean-*.jsonl"

    short = tmp_path / "short"
    config = load_config(
        RecipeConfig,
        STDLIB_RECIPE,
        [f"output_dir={short}", "quality.enabled=false", "decontaminate.enabled=false", "tokenize.tokenizer=tok"],
    )
    stages = recipe_stages(config)
    assert [s.name for s in stages][:3] == ["corpus", "corpus-report", "signatures"]
    assert _first_step(stages, "signatures").inputs == [f"{short}/corpus-*.jsonl"]
    assert _first_step(stages, "tokenize").reader.inputs == [f"{short}/dedup-*.jsonl"]
    assert "tokenizer" not in [s.name for s in stages]


def test_a_small_recipe_runs_end_to_end_and_a_rerun_runs_nothing_again(tmp_path, capsys):
    overrides = [
        f"output_dir={tmp_path / 'out'}",
        "corpus.include=['[b-c]*.py']",
        "corpus.max_bytes=4000",
        "executor.tasks=2",
        "quality.enabled=false",
        "decontaminate.enabled=false",
        "tokenize.vocab_size=400",
    ]
    assert main(["--config", str(STDLIB_RECIPE), *overrides]) == 0
    out = tmp_path / "out"
    assert capsys.readouterr().out.splitlines()[-1] == f"dataset: {out}/code_text_document.bin/.idx"
    corpus_ids = sorted(r["id"] for r in read_jsonl(*sorted(out.glob("corpus-*.jsonl"))))
    kept = read_jsonl(*sorted(out.glob("dedup-*.jsonl")))
    report = json.loads((out / "dedup.dedup.json").read_text())
    assert report["documents"] == len(corpus_ids) and report["kept"] == len(kept) > 0
    assert set(r["id"] for r in kept) <= set(corpus_ids)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    assert len(IndexedDataset(str(out / "code_text_document"))) == len(kept)
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert main(["--config", str(STDLIB_RECIPE), *overrides]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == written


def test_a_ray_run_writes_what_a_local_run_writes(tmp_path):
    import ray

    extra = write_extra(tmp_path / "extra.jsonl")
    overrides = small_recipe(extra, train_tokenizer(tmp_path / "tokenizer"), tasks=2)
    # corpus -> tokenize only: each Ray stage costs seconds of actor start-up on two cores
    overrides += ["dedup.enabled=false", "decontaminate.enabled=false"]
    assert main(["--config", str(STDLIB_RECIPE), f"output_dir={tmp_path / 'local'}", *overrides]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray_run = [f"output_dir={tmp_path / 'ray'}", "executor.executor=ray", "executor.slurm.mem_per_cpu_gb=0.5"]
        assert main(["--config", str(STDLIB_RECIPE), *overrides, *ray_run]) == 0
    finally:
        ray.shutdown()
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    assert [p for p in outputs(tmp_path / "local") if p.startswith("corpus-")] == [
        "corpus-00000-00000.jsonl",
        "corpus-00001-00000.jsonl",
    ]
