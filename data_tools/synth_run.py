"""A synthesis run split into tasks, so that several processes or nodes ask an endpoint at once.

    python -m data_tools.synth textbooks --count 200000 --out synth/textbooks.jsonl --tasks 16 \\
        --executor slurm --slurm-partition cpu --base-url URL --model M

Two datatrove stages (data_tools.executors), the second after the first:
- ``generate``, ``--tasks N`` tasks: task r files an answer for every prompt whose index i in the
  sampled sequence has ``i % N == r`` (data_tools.synth_prompts.sample_prompts), in its own files
  ``OUT.tasks/RRRRR-of-NNNNN.jsonl`` and ``.failures.jsonl``, through data_tools.llm: a killed task
  rerun skips the ids its files settle, so every id is asked once. Each task has its own client, so
  ``--max-concurrency`` and the request/token budgets apply per task (N tasks ask up to N times as
  much of the endpoint). A single run is the case N = 1.
- ``summary``, one task: merges the task files into OUT and its failure log in id order (the same
  bytes for any N), drops exercises whose solution and tests nearly repeat an earlier id's (so the
  earliest is kept, whatever the task count), and writes ``OUT.summary.json``: requested, succeeded,
  failed (rejected included), rejected, tokens and estimated cost per task and in total, counted
  from the files, and what each task's last run skipped and retried.

Both stages run again on a rerun even where datatrove marked them complete: a task with nothing left
to ask finishes at once, and a larger ``--count`` or ``--retry-failed`` reaches every task. The task
count is part of the layout: a rerun must give the same ``--tasks`` (else a clear error), since which
task files an id depends on it.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, run_stages
from data_tools.synth_exercises import SolutionDeduplicator
from data_tools.synth_prompts import prompt_index
from data_tools.synth_task import SynthConfig, announce, generate_task
from megaphi.common.errors import UserError
from megaphi.common.files import atomic_open, atomic_write_text
from megaphi.common.jsonl import MalformedRecordError, iter_lines, parse_line
from megaphi.eval.sandbox import check_sandbox

__all__ = ["SynthConfig", "RunFiles", "stages", "synthesize", "merge_tasks"]

TASK_FILE = re.compile(r"(\d{5})-of-(\d{5})\.jsonl")


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps what: the merged files the user named and the per-task files beside them."""

    out: Path
    failures: Path

    @classmethod
    def of(cls, config: SynthConfig) -> "RunFiles":
        return cls(Path(config.out), config.failures_path)

    @property
    def prefix(self) -> Path:
        return self.out.with_name(self.out.name.removesuffix(".jsonl"))

    @property
    def tasks_dir(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".tasks")

    @property
    def summary(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".summary.json")

    def task_out(self, rank: int, tasks: int) -> Path:
        return self.tasks_dir / f"{rank:05d}-of-{tasks:05d}.jsonl"

    def task_failures(self, rank: int, tasks: int) -> Path:
        return self.tasks_dir / f"{rank:05d}-of-{tasks:05d}.failures.jsonl"

    def task_last_run(self, rank: int, tasks: int) -> Path:
        return self.tasks_dir / f"{rank:05d}-of-{tasks:05d}.last-run.json"

    def task_counts(self) -> set[int]:
        """The task counts of the task files already here (one, unless someone mixed runs)."""
        if not self.tasks_dir.is_dir():
            return set()
        return {int(m.group(2)) for p in self.tasks_dir.iterdir() if (m := TASK_FILE.fullmatch(p.name))}

    def check_layout(self, tasks: int) -> None:
        """A rerun must split the ids as the run it resumes did, and never overwrite a merged output that
        has no task files behind it (a run of an earlier version, or task files deleted)."""
        found = self.task_counts()
        if found - {tasks}:
            other = max(found - {tasks})
            raise UserError(
                f"{self.tasks_dir} holds the files of a {other}-task run: rerun with --tasks {other} (which task "
                "asks for an id depends on the task count), or move that directory away to start afresh"
            )
        if not found and (self.out.exists() or self.failures.exists()):
            raise UserError(
                f"{self.out} exists but {self.tasks_dir} (the per-task files a rerun resumes from) does not: "
                "move the output away (or give another --out) so that nothing in it is overwritten"
            )


class GenerateStep(PipelineStep):
    """Runs :func:`data_tools.synth_task.generate_task` for the task's rank into the task's own files."""

    name = "synthesize"
    type = "🤖 - GENERATOR"

    def __init__(self, config: SynthConfig):
        super().__init__()
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        files = RunFiles.of(self.config)
        stats = generate_task(
            self.config, rank, world_size, files.task_out(rank, world_size), files.task_failures(rank, world_size)
        )
        atomic_write_text(files.task_last_run(rank, world_size), json.dumps(stats.to_dict()) + "\n")
        for key in ("requested", "already_done", "failed_before", "succeeded", "failed", "rejected", "retries"):
            self.stat_update(key, value=getattr(stats, key))


class SummaryStep(PipelineStep):
    """Merges every task's files and writes the summary (one task: see :func:`merge_tasks`)."""

    name = "merge and summarise"
    type = "💽 - WRITER"

    def __init__(self, config: SynthConfig, tasks: int):
        super().__init__()
        self.config, self.tasks = config, tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        summary = merge_tasks(self.config, self.tasks)
        self.stat_update("succeeded", value=summary["succeeded"])
        self.stat_update("failed", value=summary["failed"])


def stages(config: SynthConfig, options: ExecutorOptions) -> list[Stage]:
    """The run's datatrove stages: ``generate`` (``options.tasks`` tasks) and ``summary`` (one task).
    Checks what can be checked before any task runs, and prints the size of the prompt space."""
    config.check()
    options.check()
    files = RunFiles.of(config)
    files.check_layout(options.tasks)
    announce(config)
    if config.kind == "exercises" and not config.unsafe_no_sandbox and options.executor == "local":
        check_sandbox()  # here, once, before any task asks for anything (a task on a cluster checks its node)
    if config.client.api_key:
        # The key travels to the tasks in the environment (forked locally, exported by sbatch), never in
        # the pickled pipeline or the executor's JSON that datatrove writes beside its logs.
        os.environ["OPENAI_API_KEY"] = config.client.api_key
    task_config = replace(config, client=replace(config.client, api_key=None))
    return [
        Stage(
            "generate",
            [GenerateStep(task_config)],
            logging_dir_for(files.prefix, "generate"),
            rerun_completed=True,
        ),
        Stage(
            "summary",
            [SummaryStep(task_config, options.tasks)],
            logging_dir_for(files.prefix, "summary"),
            tasks=1,
            rerun_completed=True,
        ),
    ]


def synthesize(config: SynthConfig, options: ExecutorOptions | None = None) -> dict[str, Any] | None:
    """Runs (locally, on Ray) or submits (Slurm) the run; the summary :func:`merge_tasks` wrote, or None
    when the stages were submitted to Slurm (the summary appears in OUT.summary.json when they ran)."""
    options = options or ExecutorOptions()
    run = stages(config, options)
    executors = run_stages(run, options)
    if options.executor == "slurm":
        jobs = {stage.name: executor.job_id for stage, executor in zip(run, executors)}
        print(json.dumps({"submitted": jobs, "summary": str(RunFiles.of(config).summary)}))
        return None
    return json.loads(RunFiles.of(config).summary.read_text())


# ---------------------------------------------------------------------------------------------
# The merge


@dataclass
class TaskCounts:
    """What one task's files settle, counted from the files (so resumed and killed runs add up)."""

    requested: int = 0  # the ids of this task in the run's --count
    succeeded: int = 0
    failed: int = 0  # everything in the failure log, rejected answers included (as RunStats counts)
    rejected: int = 0
    near_duplicates_dropped: int = 0  # exercises the merge dropped (counted as rejected, not succeeded)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost_usd: float = 0.0
    last_run: dict[str, Any] = field(default_factory=dict)  # the RunStats of the task's last run

    def add_usage(self, record: dict[str, Any]) -> None:
        usage = record.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def drop_near_duplicate(self) -> None:
        self.succeeded -= 1
        self.failed += 1
        self.rejected += 1
        self.near_duplicates_dropped += 1


@dataclass(slots=True)
class _Line:
    """Where a record of a task file is, so the merge can write records in id order without holding them."""

    index: int
    file: int
    offset: int
    length: int


def _scan(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(offset, length, record) of every line of a task file; a torn last line (a killed task that was
    not rerun) is an error, since the merge runs only after every task finished."""
    offset = 0
    for number, line in iter_lines(path):
        try:
            record = parse_line(line, path, number)
        except MalformedRecordError as error:
            raise MalformedRecordError(f"{error}; rerun the command: its task truncates a torn last line") from None
        yield offset, len(line), record
        offset += len(line)


def _in_order(lines: list[_Line], files: list[BinaryIO]) -> Iterator[tuple[int, bytes]]:
    """(index, line) of every record of ``lines``, read back from the task files in id order."""
    for line in sorted(lines, key=lambda item: item.index):
        source = files[line.file]
        source.seek(line.offset)
        yield line.index, source.read(line.length)


def merge_tasks(config: SynthConfig, tasks: int) -> dict[str, Any]:
    """Merges the files of ``tasks`` tasks into the run's output and failure log, in id order, and
    writes the summary (see the module doc). Memory grows with the number of records (an id's index
    and place, ~100 bytes each) and, for exercises, with their MinHash signatures; never with texts."""
    files = RunFiles.of(config)
    paths = [(files.task_out(rank, tasks), files.task_failures(rank, tasks)) for rank in range(tasks)]
    missing = [str(p) for pair in paths for p in pair if not p.exists()]
    if missing:
        raise UserError(f"{missing[0]} is missing: its task has not run; rerun the same command")
    counts = [TaskCounts(requested=len(range(rank, config.count, tasks))) for rank in range(tasks)]
    kept: list[_Line] = []
    failed: list[_Line] = []
    opened: list[BinaryIO] = []
    try:
        for rank, (out_path, failures_path) in enumerate(paths):
            for lines, path in ((kept, out_path), (failed, failures_path)):
                opened.append(open(path, "rb"))
                for offset, length, record in _scan(path):
                    lines.append(_Line(prompt_index(record["id"]), len(opened) - 1, offset, length))
                    counts[rank].add_usage(record)
                    if lines is kept:
                        counts[rank].succeeded += 1
                    else:
                        counts[rank].failed += 1
                        counts[rank].rejected += str(record.get("reason", "")).startswith("rejected: ")
        duplicates = SolutionDeduplicator() if config.kind == "exercises" and not config.keep_near_duplicates else None
        near: list[tuple[int, bytes]] = []  # (index, failure line) of the exercises dropped here
        files.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(files.out, "wb") as out:
            for index, data in _in_order(kept, opened):
                if duplicates is not None:
                    record = json.loads(data)
                    verdict = duplicates.check(record["id"], record["canonical_solution"], record["test"])
                    if verdict is not None:
                        near.append((index, _near_duplicate_failure(record, duplicates.reason(verdict))))
                        counts[index % tasks].drop_near_duplicate()
                        continue
                out.write(data)
        files.failures.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(files.failures, "wb") as out:
            for _, data in heapq.merge(_in_order(failed, opened), near, key=lambda item: item[0]):
                out.write(data)
    finally:
        for f in opened:
            f.close()
    for rank, task in enumerate(counts):
        task.estimated_cost_usd = round(
            (
                task.prompt_tokens * config.client.input_price_per_mtok
                + task.completion_tokens * config.client.output_price_per_mtok
            )
            / 1e6,
            6,
        )
        last_run = files.task_last_run(rank, tasks)
        task.last_run = json.loads(last_run.read_text()) if last_run.exists() else {}
    summary = summarise(config, counts)
    atomic_write_text(files.summary, json.dumps(summary, indent=1) + "\n")
    return summary


def _near_duplicate_failure(record: dict[str, Any], reason: str) -> bytes:
    """The failure log's line for an exercise the merge dropped: the reason, and the exercise itself."""
    exercise = {k: v for k, v in record.items() if k not in ("id", "meta", "usage", "model")}
    failure = {"id": record["id"], "reason": reason, "meta": record.get("meta", {}), "exercise": exercise}
    if "usage" in record:
        failure["usage"] = record["usage"]
    return (json.dumps(failure, ensure_ascii=False) + "\n").encode()


SUMMED = (
    "requested",
    "succeeded",
    "failed",
    "rejected",
    "near_duplicates_dropped",
    "prompt_tokens",
    "completion_tokens",
)
LAST_RUN_SUMMED = ("already_done", "failed_before", "retries")


def summarise(config: SynthConfig, counts: list[TaskCounts]) -> dict[str, Any]:
    """Totals first (the keys a single run always printed), then one entry per task."""
    total: dict[str, Any] = {key: sum(getattr(task, key) for task in counts) for key in SUMMED}
    total["estimated_cost_usd"] = round(sum(task.estimated_cost_usd for task in counts), 6)
    # what this run's tasks found settled already and how often they asked again
    total.update({key: sum(int(task.last_run.get(key, 0)) for task in counts) for key in LAST_RUN_SUMMED})
    return {
        "kind": config.kind,
        "out": str(config.out),
        "failures": str(config.failures_path),
        "tasks": len(counts),
        **total,
        "per_task": [{"task": rank, **task.__dict__} for rank, task in enumerate(counts)],
    }
