"""Where a data stage runs: datatrove's local, Slurm or Ray executor, chosen by the same flags in every command.

Every data stage is a list of datatrove pipeline steps split into ``--tasks`` tasks, of which ``--workers``
run at once. A task that finished leaves a completion marker under the stage's logging directory, so a
rerun after a crash or a killed Slurm task runs only the tasks that are missing. The same pipeline, the
same task count and the same inputs give the same outputs on every executor: tasks split their inputs by
rank, never by which machine or worker runs them. This module holds the flags, the stages and their
checks; the executors themselves are :mod:`data_tools.local_executor` and :mod:`data_tools.slurm_executor`
(and datatrove's Ray executor).

    python -m data_tools.dedup ... --executor slurm --tasks 64 --slurm-partition cpu --slurm-time 04:00:00
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, TypeVar

from data_tools.local_executor import RecordingLocalExecutor
from data_tools.slurm_executor import slurm_executor, wait_for_slurm_jobs
from megaphi.common.errors import UserError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "ray")
if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # the type checker's own stubs: no module at run time

T = TypeVar("T", bound="DataclassInstance")


class ExecutorError(UserError):
    """Executor options that cannot be used."""


@dataclass
class SlurmOptions:
    """Options of the sbatch job array a stage is submitted as (``--executor slurm``)."""

    partition: str = ""  # required for slurm; the cluster's partition of CPU (or GPU) nodes
    time: str = "04:00:00"  # per task
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    gpus_per_task: int = 0
    job_name: str = "megaphi-data"
    # shell lines run before each task (module loads, exports); this Python's environment is activated after
    prefix: str = ""
    sbatch_args: dict[str, str] = field(default_factory=dict)  # further sbatch options, e.g. account, qos
    wait: bool = False  # stay until the jobs leave the queue, then check every task finished


@dataclass
class ExecutorOptions:
    """How a stage is split and where it runs."""

    executor: str = "local"
    tasks: int = 1  # how many parts the stage's input is split into
    workers: int = -1  # tasks running at once; -1: local runs one per CPU, clusters run all
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def check(self, prefix: str = "") -> None:
        """Raise naming the flag (or, in a recipe, the dotted field under ``prefix``) that is wrong."""

        def name(dotted: str) -> str:
            return f"{prefix}.{dotted}" if prefix else "--" + dotted.replace(".", "-").replace("_", "-")

        if self.executor not in EXECUTORS:
            raise ExecutorError(f"{name('executor')} {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.tasks < 1:
            raise ExecutorError(f"{name('tasks')} {self.tasks}: give at least 1 task")
        if self.workers == 0 or self.workers < -1:
            raise ExecutorError(f"{name('workers')} {self.workers}: give a positive number, or -1 for no limit")
        if self.executor == "slurm" and not self.slurm.partition:
            raise ExecutorError(
                f"{name('executor')} slurm needs {name('slurm.partition')} (sinfo lists the partitions)"
            )


def add_executor_arguments(parser: argparse.ArgumentParser, *, default_tasks: int = 1) -> None:
    """The flags every data command takes to choose its executor (see :class:`ExecutorOptions`)."""
    group = parser.add_argument_group("where it runs")
    group.add_argument("--executor", choices=EXECUTORS, default="local", help="local (default), slurm or ray")
    group.add_argument(
        "--tasks", type=int, default=default_tasks, help=f"parts the input is split into (default: {default_tasks})"
    )
    group.add_argument(
        "--workers", type=int, default=-1, help="tasks at once (default: one per CPU locally, all on a cluster)"
    )
    group.add_argument("--slurm-partition", default="", help="Slurm partition (required with --executor slurm)")
    group.add_argument("--slurm-time", default="04:00:00", help="time limit per task (default: 04:00:00)")
    group.add_argument("--slurm-cpus-per-task", type=int, default=1, help="CPUs per task (default: 1)")
    group.add_argument("--slurm-mem-per-cpu-gb", type=float, default=2.0, help="memory per CPU in GB (default: 2)")
    group.add_argument("--slurm-gpus-per-task", type=int, default=0, help="GPUs per task (default: 0)")
    group.add_argument("--slurm-job-name", default="megaphi-data", help="job name (default: megaphi-data)")
    group.add_argument("--slurm-prefix", default="", help="shell lines run before each task, e.g. 'module load ...'")
    group.add_argument(
        "--slurm-wait",
        action="store_true",
        help="wait for the jobs and check them, instead of returning once submitted",
    )
    group.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further sbatch option, e.g. account=myproj (repeatable)",
    )


def executor_options_from_args(args: argparse.Namespace) -> ExecutorOptions:
    sbatch_args: dict[str, str] = {}
    for item in args.slurm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExecutorError(f"--slurm-arg {item!r}: write KEY=VALUE, e.g. account=myproj")
        sbatch_args[key.lstrip("-")] = value
    options = ExecutorOptions(
        executor=args.executor,
        tasks=args.tasks,
        workers=args.workers,
        slurm=fields_from_args(SlurmOptions, args, "slurm_", sbatch_args=sbatch_args),
    )
    options.check()
    return options


def fields_from_args(config_type: type[T], args: argparse.Namespace, prefix: str = "", **given: Any) -> T:
    """A dataclass of a command's options from its parsed flags: flag ``--{prefix}foo-bar`` is field
    ``foo_bar`` (the contract of every stage config, of :class:`SlurmOptions` and of the quality
    commands' options); ``given`` are the fields whose value is not a flag's as parsed."""
    flags = {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(config_type) if f.name not in given}
    return config_type(**flags, **given)


def parse_stage_flags(
    parser: argparse.ArgumentParser, config_type: type[T], argv: Sequence[str] | None
) -> tuple[T, ExecutorOptions]:
    """A stage command's config and executor options from its command line: ``parser`` holds the
    command's own flags, one per field of ``config_type``; the executor flags are added here."""
    add_executor_arguments(parser)
    args = parser.parse_args(argv)
    return fields_from_args(config_type, args), executor_options_from_args(args)


def build_executor(
    pipeline: Sequence[Any],
    options: ExecutorOptions,
    logging_dir: str | os.PathLike,
    *,
    depends: Any = None,
    tasks: int | None = None,
    job_name: str | None = None,
) -> Any:
    """A datatrove executor running ``pipeline`` as ``options`` say; ``tasks`` overrides the task count for
    stages that must run as one task (a merge, a model training). ``depends`` is the executor of the
    stage that must finish first (on Slurm: a job dependency)."""
    options.check()
    n_tasks = options.tasks if tasks is None else tasks
    if options.executor != "local":
        scripted = [type(step).__name__ for step in pipeline if type(step).__module__ == "__main__"]
        if scripted:
            raise ExecutorError(
                f"pipeline step {scripted[0]} is defined in the script being run (__main__), which a "
                f"{options.executor} task cannot import: run the command as `python -m` with its "
                "__main__ block importing main from the module itself"
            )
    if options.executor == "local":
        workers = options.workers if options.workers != -1 else min(n_tasks, os.cpu_count() or 1)
        return RecordingLocalExecutor(
            list(pipeline),
            tasks=n_tasks,
            workers=min(workers, n_tasks),
            logging_dir=os.fspath(logging_dir),
            depends=depends,
            start_method="fork",
        )
    if options.executor == "slurm":
        return slurm_executor(
            pipeline,
            options.slurm,
            tasks=n_tasks,
            workers=options.workers,
            logging_dir=logging_dir,
            depends=depends,
            job_name=job_name or options.slurm.job_name,
        )
    try:
        from datatrove.executor import RayPipelineExecutor
    except ImportError as exc:  # pragma: no cover - ray is the `ray` extra (and in `dev`)
        raise ExecutorError(f"--executor ray needs ray: pip install 'ray>=2.9' ({exc})") from None
    return RayPipelineExecutor(
        list(pipeline),
        tasks=n_tasks,
        workers=options.workers,
        logging_dir=os.fspath(logging_dir),
        depends=depends,
        cpus_per_task=options.slurm.cpus_per_task,
        mem_per_cpu_gb=options.slurm.mem_per_cpu_gb,
        gpus_per_task=options.slurm.gpus_per_task,
    )


@dataclass
class Stage:
    """One step of a data command: a pipeline, its own logging directory (completion markers, stats,
    logs) and, for steps that must run whole (a merge, a report, training a classifier), one task."""

    name: str
    pipeline: list[Any]
    logging_dir: str
    tasks: int | None = None  # None: the command's --tasks
    # Tasks that resume on their own at a finer grain (synthesis skips the ids its files settle) run on
    # every run: a rerun with a larger count or --retry-failed reaches them, and one with nothing left
    # to do finishes at once. Their completion markers are cleared first, so that the markers the
    # stage ends with are this run's.
    rerun_completed: bool = False
    # What decides the stage's outputs (its inputs, options), as JSON values: a rerun with other settings
    # is refused while a task of the earlier run is marked done (its markers would skip tasks whose
    # outputs were made another way). None: only the task count is held to.
    settings: dict[str, Any] | None = None


def logging_dir_for(output_prefix: str | os.PathLike, stage: str) -> str:
    """Where a stage writing ``output_prefix`` keeps its completion markers, stats and task logs."""
    return f"{os.fspath(output_prefix)}.datatrove/{stage}"


def run_stages(stages: Sequence[Stage], options: ExecutorOptions) -> list[Any]:
    """Run stages in order, each after the previous one finished.

    Locally and on Ray each stage runs to its end before the next starts, and a stage with unfinished
    tasks stops the command naming them (a rerun runs only those). On Slurm the stages are submitted
    at once as job arrays that each wait for the previous one (``afterok``); this returns after
    submitting, or with ``options.slurm.wait`` when every job has left the queue, checked like a
    local run."""
    options.check()
    executors: list[Any] = []
    for stage in stages:
        if stage.rerun_completed:
            shutil.rmtree(Path(stage.logging_dir) / "completions", ignore_errors=True)
        tasks = options.tasks if stage.tasks is None else stage.tasks
        _claim_logging_dir(stage, tasks)
        depends = executors[-1] if executors and options.executor == "slurm" else None
        with _quiet_datatrove():  # Ray's executor warns on every stage that its logging directory is local
            executor = build_executor(
                stage.pipeline,
                options,
                stage.logging_dir,
                depends=depends,
                tasks=stage.tasks,
                job_name=f"{options.slurm.job_name}-{stage.name}",
            )
        executors.append(executor)
        if options.executor != "slurm":
            started, before = time.monotonic(), tasks - len(incomplete_tasks(stage.logging_dir, tasks))
            with _quiet_datatrove():
                executor.run()
            check_stage_finished(stage, tasks)
            log.info(
                f"{stage.name}: {tasks} task(s) done"
                + (f" ({before} done before)" if before else "")
                + f" in {time.monotonic() - started:.1f}s; logs in {stage.logging_dir}"
            )
    if options.executor == "slurm" and executors:
        with _quiet_datatrove():
            try:
                executors[-1].run()  # submits every stage, each depending on the one before
            except subprocess.CalledProcessError:
                stage = next(s for s, e in zip(stages, executors) if e.job_id is None)
                raise ExecutorError(
                    f"sbatch refused the job of stage {stage.name} (its message is above); the script is "
                    f"{Path(stage.logging_dir) / 'launch_script.slurm'}"
                ) from None
        for stage, executor in zip(stages, executors):
            job = "nothing left to run" if executor.job_id == -1 else f"job {executor.job_id}"
            log.info(f"{stage.name}: {job}; logs in {stage.logging_dir}")
        if options.slurm.wait:
            wait_for_slurm_jobs([e.job_id for e in executors])
            for stage, executor in zip(stages, executors):
                check_stage_finished(stage, executor.world_size)
    return executors


@contextlib.contextmanager
def _quiet_datatrove() -> Iterator[None]:
    """datatrove logs every task's progress and statistics to the terminal, and has no setting for it.
    While a stage runs here its tasks log to their files only (``logs/task_NNNNN.log``) and this
    process's console shows datatrove's errors only; a failed task comes back as the one error that
    :func:`check_stage_finished` raises, naming it and its log."""
    import datatrove.executor.base as executor_base
    from datatrove.utils import logging as datatrove_logging
    from loguru import logger

    add_task_logger, setup_default_logger = executor_base.add_task_logger, datatrove_logging.setup_default_logger

    def task_logger_to_file_only(*args: Any, **kwargs: Any) -> Any:
        real_stderr, sys.stderr = sys.stderr, _Discard()  # the console sink it adds writes nowhere
        try:
            return add_task_logger(*args, **kwargs)
        finally:
            sys.stderr = real_stderr

    def errors_only() -> None:
        logger.remove()
        logger.add(sys.stderr, level="ERROR")

    executor_base.add_task_logger, datatrove_logging.setup_default_logger = task_logger_to_file_only, errors_only
    errors_only()
    try:
        yield
    finally:
        executor_base.add_task_logger, datatrove_logging.setup_default_logger = add_task_logger, setup_default_logger
        setup_default_logger()


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _claim_logging_dir(stage: Stage, tasks: int) -> None:
    """Record the task count and settings a stage's completion markers belong to, or refuse a run with
    another task count or other settings while any task of the earlier run is marked done. With no task
    done (a first try that failed) the new run takes over, e.g. with the ``--on-error skip`` that the
    failed run's error suggested."""
    record = {"stage": stage.name, "tasks": tasks, "settings": stage.settings}
    path = Path(stage.logging_dir) / "stage.json"
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier == record:
            return
        done = Path(stage.logging_dir) / "completions"
        if done.is_dir() and any(done.iterdir()):
            what = "task count" if earlier.get("tasks") != tasks else "settings or inputs"
            raise ExecutorError(
                f"{stage.logging_dir} holds a run of stage {stage.name} with another {what}; rerun it as it "
                "was to finish it, or remove its outputs and that directory (or choose another output prefix)"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def check_stage_finished(stage: Stage, tasks: int) -> None:
    """Raise when a task of ``stage`` left no completion marker. A task that failed here with an error
    the user can fix (a :class:`UserError`, e.g. a malformed input) raises that error, of its own type,
    with the stage's task and logs appended; any other cause is an :class:`ExecutorError`."""
    missing = incomplete_tasks(stage.logging_dir, tasks)
    if not missing:
        return
    where = (
        f"{stage.name}: task(s) {_ranges(missing)} of {tasks} did not finish; their logs are in "
        f"{Path(stage.logging_dir) / 'logs'}; rerun the same command to run only those"
    )
    errors = Path(stage.logging_dir) / "errors"
    first = next((rank for rank in missing if (errors / f"{rank:05d}").is_file()), None)
    if first is None:
        raise ExecutorError(where)
    error = _unpickled_error(errors / f"{first:05d}.pickle")
    if isinstance(error, UserError):
        error.args = (f"{error} (task {first}); {where}",)
        raise error
    raise ExecutorError(f"{(errors / f'{first:05d}').read_text().strip()} (task {first}); {where}")


def _unpickled_error(path: Path) -> BaseException | None:
    try:
        error = pickle.loads(path.read_bytes())
    except Exception:  # none written, or a class this process cannot import: the line will do
        return None
    return error if isinstance(error, BaseException) else None


def incomplete_tasks(logging_dir: str | os.PathLike, tasks: int) -> list[int]:
    """Ranks of a stage without a completion marker (datatrove writes ``completions/NNNNN`` per task)."""
    done = Path(logging_dir) / "completions"
    return [rank for rank in range(tasks) if not (done / f"{rank:05d}").exists()]


def _ranges(ranks: Sequence[int]) -> str:
    shown = ", ".join(str(r) for r in ranks[:10])
    return shown + (f" and {len(ranks) - 10} more" if len(ranks) > 10 else "")
