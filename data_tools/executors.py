"""Where a data stage runs: datatrove's local, Slurm or Ray executor, chosen by the same flags in every command.

Every data stage is a list of datatrove pipeline steps split into ``--tasks`` tasks, of which ``--workers``
run at once. A task that finished leaves a completion marker under the stage's logging directory, so a
rerun after a crash or a killed Slurm task runs only the tasks that are missing. The same pipeline, the
same task count and the same inputs give the same outputs on every executor: tasks split their inputs by
rank, never by which machine or worker runs them.

    python -m data_tools.dedup ... --executor slurm --tasks 64 --slurm-partition cpu --slurm-time 04:00:00
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from megaphi.common.errors import UserError

EXECUTORS = ("local", "slurm", "ray")


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


@dataclass
class ExecutorOptions:
    """How a stage is split and where it runs."""

    executor: str = "local"
    tasks: int = 1  # how many parts the stage's input is split into
    workers: int = -1  # tasks running at once; -1: local runs one per CPU, clusters run all
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def check(self) -> None:
        if self.executor not in EXECUTORS:
            raise ExecutorError(f"--executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        if self.tasks < 1:
            raise ExecutorError(f"--tasks {self.tasks}: give at least 1 task")
        if self.workers == 0 or self.workers < -1:
            raise ExecutorError(f"--workers {self.workers}: give a positive number, or -1 for no limit")
        if self.executor == "slurm" and not self.slurm.partition:
            raise ExecutorError("--executor slurm needs --slurm-partition (sinfo lists the partitions)")


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
        slurm=SlurmOptions(
            partition=args.slurm_partition,
            time=args.slurm_time,
            cpus_per_task=args.slurm_cpus_per_task,
            mem_per_cpu_gb=args.slurm_mem_per_cpu_gb,
            gpus_per_task=args.slurm_gpus_per_task,
            job_name=args.slurm_job_name,
            prefix=args.slurm_prefix,
            sbatch_args=sbatch_args,
        ),
    )
    options.check()
    return options


def _environment_command(prefix: str) -> str:
    """Shell lines that give a Slurm task the interpreter and import path of the submitting process."""
    lines = [prefix] if prefix else []
    venv = Path(sys.prefix)
    if (venv / "bin" / "activate").exists():
        lines.append(f"source {venv / 'bin' / 'activate'}")
    if os.environ.get("PYTHONPATH"):
        lines.append(f"export PYTHONPATH={os.environ['PYTHONPATH']}")
    return "\n".join(lines)


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
    if options.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        workers = options.workers if options.workers != -1 else min(n_tasks, os.cpu_count() or 1)
        return LocalPipelineExecutor(
            list(pipeline),
            tasks=n_tasks,
            workers=workers,
            logging_dir=os.fspath(logging_dir),
            depends=depends,
            start_method="fork",
        )
    if options.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        slurm = options.slurm
        return SlurmPipelineExecutor(
            list(pipeline),
            tasks=n_tasks,
            workers=options.workers,
            time=slurm.time,
            partition=slurm.partition,
            cpus_per_task=slurm.cpus_per_task,
            mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            gpus_per_task=slurm.gpus_per_task,
            job_name=job_name or slurm.job_name,
            env_command=_environment_command(slurm.prefix),
            sbatch_args=dict(slurm.sbatch_args),
            logging_dir=os.fspath(logging_dir),
            depends=depends,
        )
    try:
        from datatrove.executor import RayPipelineExecutor
    except ImportError as exc:  # pragma: no cover - ray is part of the data extra
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


def logging_dir_for(output_prefix: str | os.PathLike, stage: str) -> str:
    """Where a stage writing ``output_prefix`` keeps its completion markers, stats and task logs."""
    return f"{os.fspath(output_prefix)}.datatrove/{stage}"


def run_stages(stages: Sequence[Stage], options: ExecutorOptions) -> list[Any]:
    """Run stages in order, each after the previous one finished.

    Locally each stage runs to its end before the next starts, and a stage with unfinished tasks
    stops the command naming them (a rerun runs only those). On Slurm the stages are submitted at
    once as jobs that each wait for the previous one (``afterok``), and this returns after
    submitting; on Ray the last stage runs its dependencies first."""
    options.check()
    executors: list[Any] = []
    for stage in stages:
        if stage.rerun_completed:
            shutil.rmtree(Path(stage.logging_dir) / "completions", ignore_errors=True)
        depends = executors[-1] if executors and options.executor != "local" else None
        executors.append(
            build_executor(
                stage.pipeline,
                options,
                stage.logging_dir,
                depends=depends,
                tasks=stage.tasks,
                job_name=f"{options.slurm.job_name}-{stage.name}",
            )
        )
        if options.executor == "local":
            executors[-1].run()
            check_stage_finished(stage, executors[-1].world_size)
    if options.executor != "local" and executors:
        executors[-1].run()
        if options.executor == "ray":
            for stage, executor in zip(stages, executors):
                check_stage_finished(stage, executor.world_size)
    return executors


def check_stage_finished(stage: Stage, tasks: int) -> None:
    missing = incomplete_tasks(stage.logging_dir, tasks)
    if missing:
        raise ExecutorError(
            f"{stage.name}: tasks {_ranges(missing)} of {tasks} did not finish; their logs are in "
            f"{Path(stage.logging_dir) / 'logs'}; rerun the same command to run only those"
        )


def incomplete_tasks(logging_dir: str | os.PathLike, tasks: int) -> list[int]:
    """Ranks of a stage without a completion marker (datatrove writes ``completions/NNNNN`` per task)."""
    done = Path(logging_dir) / "completions"
    return [rank for rank in range(tasks) if not (done / f"{rank:05d}").exists()]


def _ranges(ranks: Sequence[int]) -> str:
    shown = ", ".join(str(r) for r in ranks[:10])
    return shown + (f" and {len(ranks) - 10} more" if len(ranks) > 10 else "")
