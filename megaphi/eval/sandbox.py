"""Run untrusted Python under bubblewrap, and judge it against tests it cannot touch.

Every process gets its own bwrap sandbox: all namespaces unshared (no network but its own loopback,
a fresh PID namespace whose death takes every process of the sandbox with it), a read-only root
built from the interpreter's files only (``/usr``, the ``/lib*`` links, the interpreter prefix), an
empty size-capped tmpfs ``/tmp`` as the only writable place, no capabilities, no new user namespaces
(``--disable-userns``), a seccomp filter (``seccomp.py``) refusing ptrace, process_vm_*, mounts and
namespace calls, an environment with nothing of the caller's, and no file of the caller's: the code
travels as memfd file descriptors, not as paths. Each sandbox lives in its own cgroup
(``cgroup.py``) bounding memory (shared memory, memfd and the tmpfs included), processes and CPU share
for everything it starts; the cgroup is killed and checked empty afterwards, its processes are the
OOM killer's first choice and the scorer its last. Inside, ``sandbox_runner`` sets rlimits (CPU time,
address space, processes, file size, open files) before any untrusted code runs. When this process
runs as root, bwrap is started (by ``setpriv``) as an unprivileged user of the sandbox's own.

``judge_programs`` is the scorer's path: per sample, one sandbox runs the candidate (prompt +
completion) and serves calls; a second runs the tests with proxies of the candidate's entry points,
exchanging only plain data (see ``sandbox_runner``), and alone holds the pipe on which the verdict
is written. ``run_programs`` runs whole programs in one sandbox each and reports whether they ran to
their end; a program that wants to forge that report can, so it is not for judging hostile code.

Outside, a sample ends when its sandboxes have used ``timeout_s`` of CPU time between them (read from
their cgroups, so that a busy machine costs no sample its verdict) or three times that in wall-clock
time; only a capped excerpt of what was printed is kept, and a process that prints more than
``output_limit_bytes`` is stopped.

This module is the public face (``run_programs``, ``judge_programs``, ``check_sandbox``); the parts:
``sandbox_types`` (limits, results, the judged job), ``bwrap`` (the command a sandbox starts with),
``sandbox_process`` (one process in its sandbox and cgroup), ``sandbox_jobs`` (a job's sandboxes run
to a verdict), ``sandbox_pool`` (how many jobs run at once), and ``sandbox_runner`` (what runs inside).
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import warnings
from typing import Sequence

from megaphi.common.errors import UserError
from megaphi.eval.bwrap import default_python
from megaphi.eval.cgroup import CgroupTree, CgroupUnavailable, cgroup_tree, protect_from_oom_killer
from megaphi.eval.sandbox_jobs import JudgingPair, ProgramSandbox
from megaphi.eval.sandbox_pool import run_all, workers_that_fit_in_memory
from megaphi.eval.sandbox_types import STATUSES, JudgedProgram, SandboxLimits, SandboxResult, SandboxUnavailable
from megaphi.eval.seccomp import SeccompUnavailable, filter_program

# The public face of the sandbox: what scoring and synthetic-data validation import.
__all__ = [
    "STATUSES",
    "JudgedProgram",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "check_sandbox",
    "default_python",
    "judge_programs",
    "run_programs",
]


def _sandbox_tree() -> CgroupTree:
    try:
        filter_program()
        tree = cgroup_tree()
    except (CgroupUnavailable, SeccompUnavailable) as error:
        raise SandboxUnavailable(
            f"the sandbox cannot enforce its limits here: {error}; or pass "
            "--unsafe-no-sandbox to run model-written code without isolation"
        ) from None
    protect_from_oom_killer()
    return tree


@functools.lru_cache(maxsize=None)
def _sandbox_problem(python: str) -> str | None:
    """Why bwrap cannot run ``python`` here, with the remedy; None when it can."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: install it (Debian: apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv is not installed (as root it starts bwrap as an unprivileged user): install util-linux"
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        return f"the interpreter {python} does not exist or is not executable (pick another with --sandbox-python)"
    try:
        limits = SandboxLimits(timeout_s=30.0)
        result = ProgramSandbox(limits, python, _sandbox_tree()).judge("pass")
    except OSError as error:
        return f"bwrap could not start ({error})"
    if result.passed:
        return None
    who = "every user" if os.geteuid() == 0 else "this user"
    said = " ".join(result.output.split())[-300:] or result.detail
    return (
        f"bwrap could not run {python} ({said}): bubblewrap 0.8 or later is needed (--disable-userns, "
        f"--seccomp), user namespaces must be allowed (sysctl kernel.unprivileged_userns_clone=1) and the "
        f"interpreter readable by {who} (pick another with --sandbox-python)"
    )


_probing = threading.Lock()  # the first callers, from many threads at once, wait for one probe


def check_sandbox(python: str | None = None) -> None:
    """Raise SandboxUnavailable, saying why and what to do, when the sandbox cannot run programs here."""
    with _probing:
        problem = _sandbox_problem(python or default_python())
    if problem is not None:
        raise SandboxUnavailable(
            f"the sandbox cannot run here: {problem}; or pass --unsafe-no-sandbox to run "
            "model-written code without isolation"
        )


def _prepare(
    python: str | None, unsafe_no_sandbox: bool, workers: int | None, limits: SandboxLimits, sandboxes_per_job: int
) -> tuple[str, CgroupTree | None, int]:
    """The interpreter, the cgroup tree (None when unsafe) and the worker count, or why not."""
    python = python or default_python()
    if unsafe_no_sandbox:
        warnings.warn(
            "running model-written code WITHOUT a sandbox: it can read, change and send anything this user can",
            RuntimeWarning,
            stacklevel=3,
        )
        tree = None
    else:
        check_sandbox(python)
        tree = _sandbox_tree()
    # A sandboxed program spends much of its short life in namespace setup and teardown, waiting on
    # the kernel rather than computing, so two per core keep the cores busy.
    workers = 2 * (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    if tree is not None:  # unsandboxed, no cgroup bounds a job's memory to admit against
        workers = workers_that_fit_in_memory(workers, limits.memory_mb, sandboxes_per_job)
    return python, tree, workers


def run_programs(
    programs: Sequence[str],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    max_processes: int = 16,
    output_limit_bytes: int = 1 << 20,
    python: str | None = None,
    unsafe_no_sandbox: bool = False,
) -> list[SandboxResult]:
    """Run each program in its own sandbox, ``workers`` at a time (default: 2 per core); results in input order.

    A program passes only when it runs to its end; raising anything (``SystemExit`` included),
    exiting early, dying by signal, or crossing a limit makes it fail. The program itself could forge
    that report: use ``judge_programs`` to judge hostile code. Raises SandboxUnavailable when the
    sandbox cannot run, unless ``unsafe_no_sandbox`` (which keeps the rlimits, timeout and cleared
    environment but gives the program the whole machine).
    """
    limits = SandboxLimits(
        timeout_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes, output_limit_bytes=output_limit_bytes
    )
    python, tree, workers = _prepare(python, unsafe_no_sandbox, workers, limits, 1)
    return run_all(programs, lambda: ProgramSandbox(limits, python, tree), limits, 1, tree is not None, workers)


def judge_programs(
    jobs: Sequence[JudgedProgram],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    max_processes: int = 16,
    output_limit_bytes: int = 1 << 20,
    python: str | None = None,
    unsafe_no_sandbox: bool = False,
) -> list[SandboxResult]:
    """Judge each candidate by its tests, two sandboxes per job, ``workers`` jobs at a time; results in order.

    A job passes only when its tests run to their end in the test sandbox, which writes the verdict;
    the candidate's sandbox only answers calls with plain data. Limits apply to each sandbox;
    ``timeout_s`` is the CPU time of the whole job (both sandboxes, every process), which may take
    three times as long in wall-clock time. Fewer jobs run at once where the scorer's memory does not
    hold ``workers`` of them at their limits. Raises SandboxUnavailable when the sandbox cannot run or
    enforce its limits, or not even one job fits, unless ``unsafe_no_sandbox`` (where ``timeout_s`` is
    wall-clock time).
    """
    limits = SandboxLimits(
        timeout_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes, output_limit_bytes=output_limit_bytes
    )
    python, tree, workers = _prepare(python, unsafe_no_sandbox, workers, limits, 2)
    return run_all(jobs, lambda: JudgingPair(limits, python, tree), limits, 2, tree is not None, workers)
