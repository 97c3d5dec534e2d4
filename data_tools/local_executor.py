"""The local executor of the data stages: datatrove's, with each task in a process of its own and
every failed task recorded (:class:`RecordingLocalExecutor`); ``data_tools.executors`` chooses it for
``--executor local``."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import pickle
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.utils.stats import PipelineStats

from megaphi.common.errors import UserError
from megaphi.common.processes import die_with_parent


class RecordingLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor, changed in two ways:

    - a task that raises is recorded as failed (its error in ``errors/NNNNN``, and pickled in
      ``errors/NNNNN.pickle``, under the logging directory) and the other tasks go on, so that the
      command can name every failed task and raise the first one's error (see
      :func:`data_tools.executors.check_stage_finished`) instead of stopping at the first exception;
    - each task runs in a process of its own, so a task whose process dies (the kernel's OOM killer,
      ``kill -9``) is recorded as failed while the others go on: datatrove's worker pool would wait
      forever for the dead worker's result."""

    def run(self) -> None:
        assert self.depends is None, "run_stages runs local stages one after another"
        self._launched = True
        ranks = self.get_incomplete_ranks(range(self.local_rank_offset, self.local_rank_offset + self.local_tasks))
        if not ranks:
            return
        self.save_executor_as_json()
        # One forked process per task, at most `workers` at once, even for one task: a process that dies
        # takes only its own task with it, and this process never runs a step itself, so it holds no
        # thread pool of torch or a tokenizer that a later fork would copy in a locked state. Each
        # task's statistics are in stats/NNNNN.json; nothing is sent back.
        global _running_executor
        _running_executor = self  # forked children find the pipeline here: it need not pickle
        context = multiprocessing.get_context(self.start_method)
        pending = list(ranks)
        running: dict[Any, tuple[tuple[Any, int], int]] = {}  # process sentinel -> (process, rank), local rank
        while pending or running:
            while pending and len(running) < self.workers:
                rank = pending.pop(0)
                free = min(set(range(self.workers)) - {local for _, local in running.values()})
                process = context.Process(target=_run_task_of_running_executor, args=(rank, free))
                process.start()
                running[process.sentinel] = (process, rank), free
            for sentinel in multiprocessing.connection.wait(list(running)):
                (process, rank), _ = running.pop(sentinel)
                process.join()
                if process.exitcode != 0:  # a task that raised exits 0 with its error recorded
                    self._record_error(rank, TaskProcessDied(process.exitcode))

    def _run_recorded(self, rank: int, local_rank: int) -> PipelineStats:
        errors = Path(self.logging_dir.path) / "errors"
        for old in (errors / f"{rank:05d}", errors / f"{rank:05d}.pickle"):
            old.unlink(missing_ok=True)
        try:
            return self._run_for_rank(rank, local_rank)
        except Exception as error:  # the traceback is in the task's log file
            self._record_error(rank, error)
            return PipelineStats()

    def _record_error(self, rank: int, error: BaseException) -> None:
        errors = Path(self.logging_dir.path) / "errors"
        if (errors / f"{rank:05d}").exists():  # the task recorded its own error before its process ended
            return
        errors.mkdir(parents=True, exist_ok=True)
        (errors / f"{rank:05d}").write_text(_one_line(error) + "\n")
        with contextlib.suppress(Exception):  # an error that does not pickle is known by its line
            (errors / f"{rank:05d}.pickle").write_bytes(pickle.dumps(error))


class TaskProcessDied(Exception):
    def __init__(self, exitcode: int | None) -> None:
        how = f"was killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exited ({exitcode})"
        super().__init__(
            f"the process running this task {how}, e.g. by the kernel's OOM killer: give each task more "
            "memory (more --tasks, fewer --workers)"
        )


_running_executor: RecordingLocalExecutor | None = None


def _run_task_of_running_executor(rank: int, local_rank: int) -> None:
    assert _running_executor is not None
    die_with_parent()  # a command killed with SIGKILL takes its tasks along: a rerun must not race them
    _running_executor._run_recorded(rank, local_rank)


def _one_line(error: BaseException) -> str:
    """An error as one line: a user error's own message, anything else with its type."""
    text = " ".join(str(error).split())
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"
