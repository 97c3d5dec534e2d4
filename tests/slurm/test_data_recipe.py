"""The data recipe on the two-node local Slurm: the same outputs as a local run, and a rerun after a
killed task that runs only what is missing.

The recipe is the stdlib one (data_tools/recipes/stdlib.yaml), every stage, on a slice of the standard
library plus one JSONL file, in three tasks per stage. The local run labels the corpus and trains the
quality classifier; the Slurm run filters with that classifier (training it twice would only add
minutes). The JSONL file is first a named pipe: the corpus task that reads it waits until it is
killed, as a task on a failing node would.
"""

import json
import os
import sys
import time

from data_tools.executors import incomplete_tasks
from data_tools.recipe import main
from tests.conftest import read_jsonl
from tests.data_tools.recipe_runs import REPO, RECIPE, outputs, small_recipe, train_tokenizer, write_extra


def _wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_the_recipe_on_slurm_matches_the_local_run_and_a_killed_task_is_all_a_rerun_runs(slurm_two_nodes, tmp_path):
    extra = write_extra(tmp_path / "extra.jsonl")
    overrides = small_recipe(extra, train_tokenizer(tmp_path / "tokenizer"), tasks=3, quality=True)
    local = tmp_path / "local"
    assert main(["--config", str(RECIPE), f"output_dir={local}", *overrides]) == 0
    overrides.append(f"quality.classifier={local / 'quality.classifier'}")

    # The Slurm run, with the JSONL input a pipe nobody writes to: its corpus task hangs.
    extra.unlink()
    os.mkfifo(extra)
    slurm = tmp_path / "slurm"
    argv = [sys.executable, "-m", "data_tools.recipe", "--config", str(RECIPE), f"output_dir={slurm}", *overrides]
    argv += ["executor.executor=slurm", "executor.slurm.partition=debug", "executor.slurm.mem_per_cpu_gb=0.25"]
    env = {"PYTHONPATH": str(REPO)}
    submitted = slurm_two_nodes.run(*argv, env=env).stdout
    corpus_job = submitted.split("submitted Slurm jobs ")[1].split(",")[0]
    corpus_logs = slurm / "corpus.datatrove" / "corpus"
    _wait(lambda: len(incomplete_tasks(corpus_logs, 3)) == 1, "two of the three corpus tasks")
    (hung,) = incomplete_tasks(corpus_logs, 3)
    task = f"{corpus_job}_{hung}"
    _wait(lambda: "RUNNING" in slurm_two_nodes.run("squeue", "-h", "-o", "%T", "-j", task).stdout, task)
    slurm_two_nodes.run("scancel", task)
    # the stages after the corpus can never start now: Slurm cancels them
    _wait(lambda: not slurm_two_nodes.run("squeue", "-h").stdout.strip(), "the queue to empty")
    assert incomplete_tasks(corpus_logs, 3) == [hung]
    assert not list(slurm.glob(f"corpus-{hung:05d}-*.jsonl")) and not list(slurm.glob("dedup-*.jsonl"))
    finished = {p.name: p.stat().st_mtime_ns for p in (corpus_logs / "completions").iterdir()}

    # Rerun the same command once the input is readable: only the killed task runs, then the rest.
    extra.unlink()
    write_extra(extra)
    rerun = slurm_two_nodes.run(*argv, "executor.slurm.wait=true", env=env, timeout=300, check=False)
    assert rerun.stdout.strip().endswith(f"dataset: {slurm}/code_text_document.bin/.idx"), rerun.stdout + rerun.stderr
    assert json.loads((corpus_logs / "ranks_to_run.json").read_text()) == [hung]
    assert {p.name: p.stat().st_mtime_ns for p in (corpus_logs / "completions").iterdir() if p.name in finished} == (
        finished
    )
    assert not list(slurm.glob(".corpus-*")), "the killed task's half-written shard is gone"

    # Same kept documents, same bytes: the split depends on the task count, not on the executor.
    kept = [r["id"] for r in read_jsonl(*sorted(local.glob("clean-*.jsonl")))]
    assert [r["id"] for r in read_jsonl(*sorted(slurm.glob("clean-*.jsonl")))] == kept
    assert kept and "extra-1" in [r["id"] for r in read_jsonl(*sorted(slurm.glob("corpus-*.jsonl")))]
    assert outputs(slurm) == outputs(local)
    assert {name.split("-")[0] for name in outputs(local)} >= {
        "corpus",
        "quality",
        "dedup",
        "clean",
        "code_text_document.bin",
    }
    assert len(read_jsonl(*sorted(local.glob("quality-*.jsonl")))) < len(
        read_jsonl(*sorted(local.glob("corpus-*.jsonl")))
    )
    # the tasks ran on both nodes
    logs = [log.read_text() for log in slurm.glob("*.datatrove/*/slurm_logs/*.out")]
    assert {line.split()[1] for text in logs for line in text.splitlines() if line.startswith("node: ")} == {"n1", "n2"}
