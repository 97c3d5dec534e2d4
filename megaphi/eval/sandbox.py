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
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import queue
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from megaphi.eval.cgroup import (
    CgroupLimits,
    CgroupTree,
    CgroupUnavailable,
    cgroup_tree,
    memory_room,
    protect_from_oom_killer,
)
from megaphi.eval.seccomp import SeccompUnavailable, filter_program

from megaphi.common.errors import UserError

STATUSES = ("passed", "failed", "timed out", "killed for memory")
_RUNNER_SOURCE = (Path(__file__).with_name("sandbox_runner.py")).read_text(encoding="utf-8")
# As root, each sandbox runs as a host user of its own from this block (unused by systemd's ranges):
# the kernel keeps some counts per user (inotify instances, POSIX message queue bytes, queued
# signals, file descriptors in flight), and a shared user would let one sample use up another's.
_SANDBOX_UIDS = 0x7FFE0000
_SANDBOX_UID_COUNT = 1 << 16
_sandbox_uids = itertools.count()
_SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
_VERDICT_LIMIT = 1 << 16
_CANDIDATE_EXIT_GRACE_S = 1.0  # a candidate that hung up is usually gone by then: its status says why


class SandboxUnavailable(UserError, RuntimeError):
    """bubblewrap, or one of the limits the sandbox promises, cannot be had on this machine."""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    detail: str = ""  # why it did not pass: the error line, the limit it hit
    output: str = ""  # a capped excerpt of stdout and stderr together
    memory_peak_bytes: int = 0  # the most any one of its sandboxes held at once (0: not measured)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class SandboxLimits:
    # CPU time of everything one program or judged sample runs (its cgroups); it may take up to
    # wall_factor times as long in wall-clock time (waiting, sleeping, sharing the cores).
    timeout_s: float = 10.0
    wall_factor: float = 3.0
    memory_mb: int = 1024  # address space of each process, and all memory of each sandbox's cgroup
    max_processes: int = 16  # processes and threads of one sandbox, all together
    max_file_mb: int = 16  # largest file a program may write
    max_open_files: int = 256
    tmp_mb: int = 64  # size of the private /tmp (its pages count against memory_mb too)
    cpu_cores: float = 1.0  # CPU share of one sandbox
    output_excerpt_bytes: int = 4096  # kept in SandboxResult.output
    output_limit_bytes: int = 1 << 20  # beyond this a process is stopped
    message_limit_bytes: int = 64 << 20  # largest value one call may carry between the two sandboxes

    def __post_init__(self) -> None:
        for name in (
            "timeout_s",
            "wall_factor",
            "memory_mb",
            "max_processes",
            "max_file_mb",
            "max_open_files",
            "tmp_mb",
            "cpu_cores",
            "output_limit_bytes",
            "message_limit_bytes",
        ):
            if getattr(self, name) <= 0:
                raise UserError(f"sandbox limit {name} must be positive, got {getattr(self, name)}")

    def runner_job(self) -> dict:
        """The limits as the runner inside the sandbox sets them."""
        return {
            "cpu_s": int(self.timeout_s) + 1,
            "address_space": self.memory_mb << 20,
            "max_processes": self.max_processes,
            "max_file": self.max_file_mb << 20,
            "max_open_files": self.max_open_files,
            "message_limit": self.message_limit_bytes,
        }


@dataclass(frozen=True)
class JudgedProgram:
    """A candidate program and the tests that judge it, which run apart from it."""

    candidate: str  # untrusted: the prompt, the completion, and any setup code both sides share
    prompt: str  # trusted: defines the helpers the tests may call (the candidate's copies are not used)
    tests: str  # trusted: runs to its end when the candidate is right
    entry_points: tuple[str, ...]  # names the tests call, answered by the candidate's process
    # Objects that setup code at the end of ``candidate`` builds there (from the candidate's own
    # classes, say) and the tests pass to it by name; they never leave the candidate's process.
    shared: tuple[str, ...] = ()


def default_python() -> str:
    """The system interpreter (a plain Python with nothing of this project) or, lacking one, this
    Python's base interpreter (outside any virtual environment)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


# Each sandbox would spend longer compiling the runner's source than running it: it receives the
# runner compiled once, by its own interpreter (marshal's format is specific to a Python version).
_BOOTSTRAP = "import marshal,os,sys;f=int(sys.argv.pop(1));c=os.read(f,1<<24);os.close(f);exec(marshal.loads(c))"


@functools.lru_cache(maxsize=None)
def _runner_code(python: str) -> bytes:
    compiler = (
        "import marshal,sys;"
        "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.buffer.read(),'<sandbox_runner>','exec')))"
    )
    done = subprocess.run(
        [python, "-I", "-S", "-c", compiler],
        input=_RUNNER_SOURCE.encode("utf-8"),
        capture_output=True,
        env=dict(_SANDBOX_ENV),
        cwd="/",
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        raise SandboxUnavailable(
            f"the interpreter {python} could not compile the sandbox runner: "
            f"{done.stderr.decode(errors='replace').strip()[-300:]} "
            "(pick another with --sandbox-python)"
        )
    return done.stdout


def _drop_root() -> list[str]:
    # setpriv rather than Popen(user=...): changing ids forces a full fork() of this process instead
    # of vfork(), which costs tens of milliseconds per program once torch is loaded.
    if os.geteuid() != 0:
        return []
    # A user is reused only after 1024 sandboxes of this scorer (whose groups were emptied by then);
    # the pid spreads scorers running side by side over the block.
    uid = _SANDBOX_UIDS + (os.getpid() * 1024 + next(_sandbox_uids) % 1024) % _SANDBOX_UID_COUNT
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs"]


@functools.lru_cache(maxsize=None)
def _bwrap_root(python: str) -> tuple[str, ...]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    interpreter_prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    if not interpreter_prefix.startswith("/usr"):
        argv += ["--ro-bind", interpreter_prefix, interpreter_prefix]
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return tuple(argv)


def _bwrap_prefix(python: str, limits: SandboxLimits, seccomp_fd: int) -> list[str]:
    return [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sandbox",
        *_bwrap_root(python),
        # An empty /dev/pts hides bwrap's devpts: a pty counts against the host-wide kernel.pty.max.
        "--dev",
        "/dev",
        "--tmpfs",
        "/dev/pts",
        "--remount-ro",
        "/dev/pts",
        "--proc",
        "/proc",
        "--size",
        str(limits.tmp_mb << 20),
        "--tmpfs",
        "/tmp",
        # /proc read-only: a scorer without CAP_SYS_RESOURCE sets no floor under the oom_score_adj
        # of 1000 that the sandbox starts with, so a writable /proc would let it lower it again.
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/proc",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
        "--seccomp",
        str(seccomp_fd),
    ]


def _memfd(name: str, data: bytes) -> int:
    """Inherited by the sandbox, never a path."""
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _describe_exit(returncode: int, sandboxed: bool, who: str = "") -> tuple[str, str]:
    # bwrap reports a child killed by signal N as exit status 128 + N.
    signum = -returncode if returncode < 0 else (returncode - 128 if sandboxed and returncode > 128 else None)
    if signum == signal.SIGXCPU:
        return "timed out", "exceeded the CPU time limit"
    if signum is not None:
        name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
        return "failed", f"{who}killed by {name} before the end of the program"
    return "failed", f"{who}exited with status {returncode} before the end of the program"


class _SandboxedProcess:
    """One runner process in its own bwrap and cgroup (or, unsafely, neither); its output on a pipe."""

    def __init__(self, role: str, fds: Sequence[int], limits: SandboxLimits, python: str, tree: CgroupTree | None):
        self.sandboxed = tree is not None
        self.cgroup, self.workdir = None, None
        self.excerpt, self.printed = bytearray(), 0
        # The runner and the seccomp program travel as memfds, the job (given later, see deliver) on a
        # pipe, so that the sandbox can start before its job is known.
        job_r, self.job_w = os.pipe()
        inherited = [_memfd("megaphi-sandbox-runner", _runner_code(python)), job_r]
        own_fds = list(inherited)
        try:
            command = [
                python,
                "-I",
                "-S",
                "-c",
                _BOOTSTRAP,
                str(inherited[0]),
                role,
                *map(str, inherited[1:] + list(fds)),
            ]
            if tree is not None:
                seccomp_fd = _memfd("megaphi-seccomp", filter_program())
                own_fds.append(seccomp_fd)
                self.cgroup = tree.create(
                    CgroupLimits(
                        memory_bytes=limits.memory_mb << 20, max_pids=limits.max_processes, cpu_cores=limits.cpu_cores
                    )
                )
                command = self.cgroup.join_command(_drop_root() + _bwrap_prefix(python, limits, seccomp_fd) + command)
            else:
                self.workdir = tempfile.TemporaryDirectory(prefix="megaphi-unsafe-")
            self.output, output_w = os.pipe()
            own_fds.append(output_w)
            try:
                self.proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output_w,
                    stderr=output_w,
                    env=dict(_SANDBOX_ENV),
                    pass_fds=[*own_fds[:-1], *fds],
                    start_new_session=True,
                    cwd=self.workdir.name if self.workdir else "/",
                )
            except BaseException:
                os.close(self.output)
                raise
        except BaseException:
            os.close(self.job_w)
            self.cleanup()
            raise
        finally:
            for fd in own_fds:
                os.close(fd)

    def deliver(self, job: dict) -> None:
        """Hand the process its job; one that died meanwhile learns nothing (its exit says why)."""
        data = json.dumps(job).encode("utf-8", "surrogatepass")
        try:
            while data:
                data = data[os.write(self.job_w, data) :]
        except BrokenPipeError:
            pass
        finally:
            os.close(self.job_w)
            self.job_w = -1

    def take_output(self, chunk: bytes, limits: SandboxLimits) -> bool:
        """Keep the excerpt; False once the process printed more than it may."""
        self.printed += len(chunk)
        self.excerpt += chunk[: limits.output_excerpt_bytes - len(self.excerpt)]
        return self.printed <= limits.output_limit_bytes

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def signal_all(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # sh/setpriv/bwrap; the namespace dies with bwrap
            except ProcessLookupError:
                pass
        if self.cgroup is not None:
            self.cgroup.signal_all()

    def kill(self) -> bool:
        """Kill everything the process started; False when its cgroup could not be emptied."""
        self.signal_all()
        emptied = self.cgroup.kill() if self.cgroup is not None else True
        self.proc.wait()
        return emptied

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()

    def memory_peak(self) -> int:
        return self.cgroup.memory_peak() if self.cgroup is not None else 0

    def cleanup(self) -> None:
        if self.job_w >= 0:
            os.close(self.job_w)
            self.job_w = -1
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.workdir is not None:
            self.workdir.cleanup()


class _TimeBudget:
    """When a sample has run out of time. Its sandboxes' CPU time (their cgroups) is held to
    ``timeout_s``, so that cores shared with other samples or jobs cost nobody a verdict; the wall
    clock, to ``wall_factor`` times that, for what waits or sleeps. Without cgroups (unsafe mode) the
    wall clock alone is held to ``timeout_s``."""

    _POLL_S = 0.05

    def __init__(self, processes: Sequence[_SandboxedProcess], limits: SandboxLimits):
        self.cgroups = [p.cgroup for p in processes if p.cgroup is not None]
        self.cpu_s = limits.timeout_s
        self.wall_s = limits.timeout_s * (limits.wall_factor if self.cgroups else 1.0)
        self.deadline = time.monotonic() + self.wall_s
        self.cpu_at_start = self._cpu()  # sandboxes started ahead of their job have booted on their own time

    def _cpu(self) -> float:
        return sum(group.cpu_seconds() for group in self.cgroups)

    def wall_left(self) -> float:
        return self.deadline - time.monotonic()

    def exceeded(self) -> str | None:
        if self.wall_left() <= 0:
            return "wall"
        if self.cgroups and self._cpu() - self.cpu_at_start >= self.cpu_s:
            return "cpu"
        return None

    def next_check(self) -> float:
        return min(self.wall_left(), self._POLL_S) if self.cgroups else self.wall_left()


def _drain(
    processes: Sequence[_SandboxedProcess],
    verdict_fd: int,
    budget: _TimeBudget,
    limits: SandboxLimits,
    done: Callable[[set], bool],
) -> tuple[bytes, str | None]:
    """Read the processes' output and the verdict pipe until ``done(open fds)``; returns (verdict, abort)."""
    verdict = bytearray()
    with selectors.DefaultSelector() as selector:
        for process in processes:
            selector.register(process.output, selectors.EVENT_READ, process)
        selector.register(verdict_fd, selectors.EVENT_READ, None)
        while not done({key.fd for key in selector.get_map().values()}):
            over = budget.exceeded()
            if over is not None:
                return bytes(verdict), over
            for key, _ in selector.select(max(0.0, budget.next_check())):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.data is None:
                    verdict += chunk[: _VERDICT_LIMIT - len(verdict)]
                elif not key.data.take_output(chunk, limits):
                    return bytes(verdict), "output"
    return bytes(verdict), None


def _drain_rest(process: _SandboxedProcess, limits: SandboxLimits) -> None:
    """What a killed process left in its output pipe."""
    os.set_blocking(process.output, False)
    try:
        while chunk := os.read(process.output, 1 << 16):
            if not process.take_output(chunk, limits):
                break
    except BlockingIOError:
        pass


def _excerpt(processes: Sequence[_SandboxedProcess], limits: SandboxLimits) -> str:
    """The processes' excerpts in order, the last one (the test's traceback) kept whole within the cap."""
    parts = [bytes(p.excerpt) for p in processes]
    last = parts[-1][: limits.output_excerpt_bytes]
    head = b"".join(parts[:-1])[: limits.output_excerpt_bytes - len(last)]
    return (head + last).decode("utf-8", "replace")


def _finish(processes: Sequence[_SandboxedProcess], limits: SandboxLimits) -> bool:
    """Kill and clean up; False when some sandbox kept processes that SIGKILL did not end."""
    emptied = True
    for process in processes:  # all at once, then wait for each
        process.signal_all()
    for process in processes:
        emptied = process.kill() and emptied
    for process in processes:
        _drain_rest(process, limits)
        os.close(process.output)
        if emptied:
            process.cleanup()
    if not emptied:
        warnings.warn(
            "a sandbox's cgroup still held processes after SIGKILL; it was left in place", RuntimeWarning, stacklevel=2
        )
    return emptied


def _verdict_result(verdict: bytes, limits: SandboxLimits) -> SandboxResult | None:
    status, _, detail = verdict.decode("utf-8", "replace").partition(" ")
    if status == "passed" and not detail:
        return SandboxResult("passed")
    if status == "memory":
        return SandboxResult("killed for memory", f"exceeded the {limits.memory_mb} MiB memory limit")
    if status == "failed":
        return SandboxResult("failed", detail)
    return None


def _limit_result(abort: str | None, limits: SandboxLimits, budget: _TimeBudget) -> SandboxResult | None:
    if abort == "cpu":
        return SandboxResult("timed out", f"exceeded the {budget.cpu_s:g} s CPU-time limit")
    if abort == "wall":
        return SandboxResult("timed out", f"exceeded the {budget.wall_s:g} s wall-clock limit")
    if abort == "output":
        return SandboxResult("failed", f"printed more than {limits.output_limit_bytes} bytes")
    return None


def _with_output(result: SandboxResult, output: str, emptied: bool, peak: int) -> SandboxResult:
    if not emptied:
        return SandboxResult("failed", "processes of the sandbox survived SIGKILL", output, peak)
    return SandboxResult(result.status, result.detail, output, peak)


class _ProgramSandbox:
    """One sandbox for a whole program, started before its program is known."""

    def __init__(self, limits: SandboxLimits, python: str, tree: CgroupTree | None):
        self.limits, self.sandboxed = limits, tree is not None
        self.verdict_r, verdict_w = os.pipe()
        try:
            self.process = _SandboxedProcess("program", [verdict_w], limits, python, tree)
        except BaseException:
            os.close(self.verdict_r)
            raise
        finally:
            os.close(verdict_w)

    def discard(self) -> bool:
        """Kill and clean up the sandbox; False when it could not be emptied."""
        emptied = _finish([self.process], self.limits)
        os.close(self.verdict_r)
        return emptied

    def judge(self, program: str) -> SandboxResult:
        limits, process, verdict_r = self.limits, self.process, self.verdict_r
        token = secrets.token_hex(16)
        try:
            process.deliver({**limits.runner_job(), "program": program, "token": token})
            budget = _TimeBudget([process], limits)
            verdict, abort = _drain([process], verdict_r, budget, limits, done=lambda open_fds: not open_fds)
            # Both pipes closed; a program that closed them itself may still be running.
            if abort is None and not process.wait(budget.wall_left()):
                abort = "wall"
            returncode = process.proc.returncode
            oom = process.oom_killed()
        finally:
            peak = process.memory_peak()
            emptied = self.discard()
        marker = verdict.rfind(token.encode() + b" ")
        result = _limit_result(abort, limits, budget) or (
            _verdict_result(verdict[marker + len(token) + 1 :], limits) if marker >= 0 else None
        )
        if result is None or (oom and not result.passed):
            status, detail = _describe_exit(returncode, self.sandboxed)
            result = (
                SandboxResult("killed for memory", f"exceeded the {limits.memory_mb} MiB memory limit")
                if oom
                else SandboxResult(status, detail)
            )
        return _with_output(result, bytes(process.excerpt).decode("utf-8", "replace"), emptied, peak)


class _JudgingPair:
    """A candidate sandbox and a test sandbox joined by two call pipes, started before their job is known."""

    def __init__(self, limits: SandboxLimits, python: str, tree: CgroupTree | None):
        self.limits, self.sandboxed = limits, tree is not None
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        self.verdict_r, verdict_w = os.pipe()
        self.processes: list[_SandboxedProcess] = []
        try:
            self.processes.append(_SandboxedProcess("candidate", [requests_r, replies_w], limits, python, tree))
            self.processes.append(_SandboxedProcess("test", [requests_w, replies_r, verdict_w], limits, python, tree))
        except BaseException:
            self.discard()
            raise
        finally:
            for fd in (requests_r, requests_w, replies_r, replies_w, verdict_w):
                os.close(fd)

    def discard(self) -> bool:
        """Kill and clean up both sandboxes; False when one could not be emptied."""
        emptied = _finish(self.processes, self.limits)
        os.close(self.verdict_r)
        return emptied

    def judge(self, job: JudgedProgram) -> SandboxResult:
        limits, verdict_r = self.limits, self.verdict_r
        candidate, test = self.processes
        try:
            candidate.deliver({**limits.runner_job(), "candidate": job.candidate})
            test.deliver(
                {
                    **limits.runner_job(),
                    "prompt": job.prompt,
                    "tests": job.tests,
                    "entry_points": list(job.entry_points),
                    "shared": list(job.shared),
                }
            )
            budget = _TimeBudget(self.processes, limits)
            # The sample ends when the test process has closed its output and its verdict pipe.
            verdict, abort = _drain(
                self.processes,
                verdict_r,
                budget,
                limits,
                done=lambda open_fds: test.output not in open_fds and verdict_r not in open_fds,
            )
            if abort is None and not test.wait(budget.wall_left()):
                abort = "wall"
            if abort is None and verdict == b"candidate-gone":
                candidate.wait(min(_CANDIDATE_EXIT_GRACE_S, budget.wall_left()))
            candidate_code, test_code = candidate.proc.returncode, test.proc.returncode
            oom = candidate.oom_killed() or test.oom_killed()
        finally:
            peak = max(process.memory_peak() for process in self.processes)
            emptied = self.discard()
        result = _limit_result(abort, limits, budget) or _verdict_result(verdict, limits)
        if result is not None and result.passed and test_code != 0:
            result = None
        if result is None or (oom and not result.passed):
            if oom:
                result = SandboxResult("killed for memory", f"exceeded the {limits.memory_mb} MiB memory limit")
            elif verdict == b"candidate-gone":
                if candidate_code is None:
                    result = SandboxResult(
                        "failed", "the candidate program stopped answering before the end of the tests"
                    )
                else:
                    result = SandboxResult(*_describe_exit(candidate_code, self.sandboxed, "the candidate program "))
            else:
                result = SandboxResult(*_describe_exit(test_code, self.sandboxed, "the test program "))
        return _with_output(result, _excerpt(self.processes, limits), emptied, peak)


class _Admission:
    """How many jobs this process runs at once, shared by every call from every thread (synthetic-data
    validation calls ``run_programs`` with one program from each of many threads): a job starts only
    while fewer jobs run than its caller's worker count allows and the memory left to the scorer
    (``memory_room``, measured whenever none of its jobs runs) holds every running job's sandboxes
    at their limits. One job always may start, so no caller waits forever; ``_prepare`` refuses a
    job that does not fit alone."""

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


class _Sandboxes(Protocol):
    def judge(self, job: Any) -> SandboxResult: ...

    def discard(self) -> bool: ...


def _run_all(
    jobs: Sequence[Any],
    start: Callable[[], _Sandboxes],
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
        result = _ProgramSandbox(limits, python, _sandbox_tree()).judge("pass")
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


_said_fewer: set[tuple[int, int]] = set()


def _workers_that_fit_in_memory(workers: int, memory_mb: int, sandboxes_per_job: int) -> int:
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
        workers = _workers_that_fit_in_memory(workers, limits.memory_mb, sandboxes_per_job)
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
    return _run_all(programs, lambda: _ProgramSandbox(limits, python, tree), limits, 1, tree is not None, workers)


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
    return _run_all(jobs, lambda: _JudgingPair(limits, python, tree), limits, 2, tree is not None, workers)
