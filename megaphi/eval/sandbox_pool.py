"""How many jobs run at once, and on which threads: workers that start each job's sandboxes ahead of
it, and one admission for the whole process that holds the running jobs to the worker count and to
the memory left to the scorer."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Protocol, Sequence

from megaphi.eval.cgroup import memory_room
from megaphi.eval.sandbox_types import SandboxLimits, SandboxResult, SandboxUnavailable


class _Admission:
    """How many jobs this process runs at once, shared by every call from every thread (synthetic-data
    validation calls ``run_programs`` with one program from each of many threads): a job starts only
    while fewer jobs run than its caller's worker count allows and the memory left to the scorer
    (``memory_room``, measured whenever none of its jobs runs) holds every running job's sandboxes
    at their limits. One job always may start, so no caller waits forever;
    ``workers_that_fit_in_memory``, called before any job starts, refuses a job that does not fit alone."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._jobs = 0
        self._bytes = 0
        self._room: tuple[int, str] | None = None

    def room(self) -> tuple[int, str]:
        """``memory_room()`` as it was when none of this process's jobs ran (now, if none runs)."""
        with self._changed:
            if self._jobs == 0 or self._room is None:
                self._room = memory_room()
            return self._room

    @contextlib.contextmanager
    def __call__(self, job_bytes: int, max_jobs: int) -> Iterator[None]:
        with self._changed:
            while self._jobs > 0 and (self._jobs >= max_jobs or self._bytes + job_bytes > self.room()[0]):
                self._changed.wait()
            if self._jobs == 0 and job_bytes:
                self._room = memory_room()
            self._jobs += 1
            self._bytes += job_bytes
        try:
            yield
        finally:
            with self._changed:
                self._jobs -= 1
                self._bytes -= job_bytes
                self._changed.notify_all()


_admission = _Admission()


class Sandboxes(Protocol):
    def judge(self, job: Any) -> SandboxResult: ...

    def discard(self) -> bool: ...


def run_all(
    jobs: Sequence[Any],
    start: Callable[[], Sandboxes],
    limits: SandboxLimits,
    sandboxes_per_job: int,
    sandboxed: bool,
    workers: int,
) -> list[SandboxResult]:
    """Each of ``workers`` threads (fewer for fewer jobs) judges one job while the sandboxes for its next
    one start (starting a sandbox is mostly waiting on the kernel, and this way no job waits for its
    own); each job runs once admitted (``_Admission``: at most ``workers`` jobs of this whole process
    at once, and what its memory holds)."""
    results: list[SandboxResult | None] = [None] * len(jobs)
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for item in enumerate(jobs):
        pending.put(item)
    job_bytes = sandboxes_per_job * limits.memory_mb << 20 if sandboxed else 0  # unsandboxed: nothing bounds it

    def work() -> None:
        ready = None
        try:
            while True:
                try:
                    index, job = pending.get_nowait()
                except queue.Empty:
                    return
                current, ready = ready or start(), None
                if not pending.empty():
                    ready = start()
                with _admission(job_bytes, workers):
                    results[index] = current.judge(job)
        finally:
            if ready is not None:
                ready.discard()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        for future in [pool.submit(work) for _ in range(min(workers, len(jobs)))]:
            future.result()
    return [result for result in results if result is not None]  # all of them: every job was judged


_said_fewer: set[tuple[int, int]] = set()


def workers_that_fit_in_memory(workers: int, memory_mb: int, sandboxes_per_job: int) -> int:
    """At most ``workers``, and no more jobs at once than the memory left to the scorer (its cgroups',
    the host's) holds at every sandbox's limit: otherwise sandboxes under their own limits can fill it
    together, and the OOM killer takes one of an honest job's processes, reported as over its limit.
    (A worker's next sandboxes, started ahead, sit idle in the runner until their job comes.)"""
    room, source = _admission.room()
    per_job = sandboxes_per_job * memory_mb << 20
    fit = room // per_job
    if fit < 1:
        raise SandboxUnavailable(
            f"one job needs {sandboxes_per_job} sandbox(es) x {memory_mb} MiB = "
            f"{per_job >> 20} MiB, but {source} leaves the scorer {room >> 20} MiB: lower "
            "--sandbox-memory-mb or give the scorer more memory"
        )
    if fit < workers and (fit, workers) not in _said_fewer:  # once: callers of one job each call often
        _said_fewer.add((fit, workers))
        print(
            f"megaphi: running {fit} job(s) at once instead of the {workers} requested: {source} leaves the "
            f"scorer {room >> 20} MiB, and each job may use {sandboxes_per_job} x {memory_mb} MiB",
            file=sys.stderr,
            flush=True,
        )
    return min(workers, fit)
