"""The Slurm executor of the data stages: each stage an sbatch job array in the submitting process's
environment, waiting for the stage before it; ``data_tools.executors`` chooses it for ``--executor slurm``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from datatrove.executor import SlurmPipelineExecutor

if TYPE_CHECKING:
    from data_tools.executors import SlurmOptions


def _environment_command(prefix: str) -> str:
    """Shell lines that give a Slurm task the interpreter and import path of the submitting process
    (and put the node in the task's Slurm log, where a node's trouble shows first)."""
    lines = ['echo "node: ${SLURMD_NODENAME:-$(hostname)}"', *([prefix] if prefix else [])]
    venv = Path(sys.prefix)
    if (venv / "bin" / "activate").exists():
        lines.append(f"source {venv / 'bin' / 'activate'}")
    if os.environ.get("PYTHONPATH"):
        lines.append(f"export PYTHONPATH={os.environ['PYTHONPATH']}")
    return "\n".join(lines)


class StagedSlurmExecutor(SlurmPipelineExecutor):
    """datatrove's Slurm executor without the extra job it submits after each stage to merge the task
    statistics: that job asks for a fixed 1 GB per CPU (more than some nodes offer) and nothing here
    reads the merged file; each task's statistics stay in ``stats/NNNNN.json``."""

    def launch_merge_stats(self) -> None:
        pass


def slurm_executor(
    pipeline: Sequence[Any],
    slurm: SlurmOptions,
    *,
    tasks: int,
    workers: int,
    logging_dir: str | os.PathLike,
    depends: Any,
    job_name: str,
) -> StagedSlurmExecutor:
    """The job array of one stage: ``tasks`` tasks as ``slurm`` says, after ``depends``'s job when given."""
    return StagedSlurmExecutor(
        list(pipeline),
        tasks=tasks,
        workers=workers,
        time=slurm.time,
        partition=slurm.partition,
        cpus_per_task=slurm.cpus_per_task,
        mem_per_cpu_gb=slurm.mem_per_cpu_gb,
        gpus_per_task=slurm.gpus_per_task,
        job_name=job_name,
        env_command=_environment_command(slurm.prefix),
        # A stage whose dependency failed (a killed task) can never start: Slurm cancels it instead
        # of leaving it pending, and a rerun submits it again after the missing tasks.
        # Memory in whole megabytes: sbatch rejects datatrove's "2.0G" for a fractional --slurm-mem-per-cpu-gb.
        sbatch_args={
            "kill-on-invalid-dep": "yes",
            "mem-per-cpu": f"{max(1, round(slurm.mem_per_cpu_gb * 1024))}M",
            **slurm.sbatch_args,
        },
        logging_dir=os.fspath(logging_dir),
        depends=depends,
        # datatrove's defaults assume a site configuration: a QOS named "normal" (clusters without
        # accounting, or with other QOS names, reject it), mail on every event, and requeueing a
        # task on failure (a deterministic failure would run again and again). A QOS, or mail, is
        # one --slurm-arg away (qos=..., mail-type=..., mail-user=...).
        qos="",
        mail_type="NONE",
        requeue=False,
        requeue_signals=None,
    )


def wait_for_slurm_jobs(job_ids: Sequence[Any], poll_seconds: float = 2.0) -> None:
    """Return when none of ``job_ids`` (``-1``: nothing was submitted) is pending or running."""
    waiting = ",".join(str(j) for j in job_ids if j not in (None, -1, "-1"))
    while waiting:
        queue = subprocess.run(
            ["squeue", "--noheader", "--format=%i", f"--jobs={waiting}"], capture_output=True, text=True
        )
        if queue.returncode != 0 or not queue.stdout.strip():  # an id Slurm forgot has long finished
            return
        time.sleep(poll_seconds)
