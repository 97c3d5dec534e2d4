"""Run untrusted Python programs under bubblewrap and say whether each ran to its end.

Every program gets its own bwrap sandbox: all namespaces unshared (no network but its own loopback,
a fresh PID namespace whose death takes every process of the program with it), a read-only root
built from the interpreter's files only (``/usr``, the ``/lib*`` links, the interpreter prefix), an
empty size-capped tmpfs ``/tmp`` as the only writable place, no capabilities, an environment with
nothing of the caller's, and no file of the caller's: the program and the harness travel as memfd
file descriptors, not as paths. Inside, ``sandbox_runner`` sets rlimits (CPU time, address space,
processes, file size) before it executes the program and reports completion on a private pipe.
When this process runs as root, bwrap is started (by ``setpriv``) as the unprivileged user ``nobody``
because the kernel never applies RLIMIT_NPROC to root, which would leave fork bombs unbounded.

Outside, a wall-clock timeout kills the whole process group (and with it the namespace), and only
a capped excerpt of what the program printed is kept; a program that prints more than
``output_limit_bytes`` is stopped.
"""
from __future__ import annotations

import functools
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from megaphi.common.errors import UserError

STATUSES = ("passed", "failed", "timed out", "killed for memory")
_RUNNER_SOURCE = (Path(__file__).with_name("sandbox_runner.py")).read_text(encoding="utf-8")
_NOBODY = 65534
_SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
_VERDICT_LIMIT = 1 << 16


class SandboxUnavailable(UserError, RuntimeError):
    """bubblewrap cannot run programs on this machine."""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of STATUSES
    detail: str = ""  # why it did not pass: the error line, the limit it hit
    output: str = ""  # a capped excerpt of stdout and stderr together

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024  # address space of each process
    max_processes: int = 16  # processes and threads of one program, all together
    max_file_mb: int = 16  # largest file a program may write
    tmp_mb: int = 64  # size of the private /tmp
    output_excerpt_bytes: int = 4096  # kept in SandboxResult.output
    output_limit_bytes: int = 1 << 20  # beyond this the program is stopped

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "tmp_mb", "output_limit_bytes"):
            if getattr(self, name) <= 0:
                raise UserError(f"sandbox limit {name} must be positive, got {getattr(self, name)}")


def default_python() -> str:
    """The system interpreter (a plain Python with nothing of this project) or, lacking one, this
    Python's base interpreter (outside any virtual environment)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _drop_root() -> list[str]:
    # setpriv rather than Popen(user=...): changing ids forces a full fork() of this process instead
    # of vfork(), which costs tens of milliseconds per program once torch is loaded.
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups", "--no-new-privs"]


def _bwrap_prefix(python: str, limits: SandboxLimits) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
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
    argv += ["--dev", "/dev", "--proc", "/proc",
             "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp",
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    return argv


def _job(token: bytes, program: str, limits: SandboxLimits) -> int:
    """A memfd holding the harness's instructions and the program (inherited, never a path)."""
    cpu_s = int(limits.timeout_s) + 1
    header = b"%s %d %d %d %d\n" % (token, cpu_s, limits.memory_mb << 20, limits.max_processes, limits.max_file_mb << 20)
    fd = os.memfd_create("megaphi-sandbox-job")
    os.write(fd, header + program.encode("utf-8", "surrogatepass"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_until_done(proc: subprocess.Popen, verdict_fd: int, deadline: float, limits: SandboxLimits):
    """Drain the program's output and the verdict pipe; returns (excerpt, verdict, abort reason)."""
    excerpt, verdict, printed = bytearray(), bytearray(), 0
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout.fileno(), selectors.EVENT_READ, "output")
        selector.register(verdict_fd, selectors.EVENT_READ, "verdict")
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(excerpt), bytes(verdict), "timed out"
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.data == "verdict":
                    verdict += chunk[: _VERDICT_LIMIT - len(verdict)]
                else:
                    printed += len(chunk)
                    excerpt += chunk[: limits.output_excerpt_bytes - len(excerpt)]
                    if printed > limits.output_limit_bytes:
                        return bytes(excerpt), bytes(verdict), "output"
    return bytes(excerpt), bytes(verdict), None


def _describe_exit(returncode: int, sandboxed: bool) -> tuple[str, str]:
    # bwrap reports a child killed by signal N as exit status 128 + N.
    signum = -returncode if returncode < 0 else (returncode - 128 if sandboxed and returncode > 128 else None)
    if signum == signal.SIGXCPU:
        return "timed out", "exceeded the CPU time limit"
    if signum is not None:
        name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
        return "failed", f"killed by {name} before the end of the program"
    return "failed", f"exited with status {returncode} before the end of the program"


def _run_one(program: str, limits: SandboxLimits, python: str, sandboxed: bool) -> SandboxResult:
    token = secrets.token_hex(16).encode()
    job_fd = _job(token, program, limits)
    verdict_r, verdict_w = os.pipe()
    command = [python, "-I", "-S", "-c", _RUNNER_SOURCE, str(job_fd), str(verdict_w)]
    if sandboxed:
        command = _drop_root() + _bwrap_prefix(python, limits) + command
    workdir = None if sandboxed else tempfile.TemporaryDirectory(prefix="megaphi-unsafe-")
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                bufsize=0, env=dict(_SANDBOX_ENV), pass_fds=(job_fd, verdict_w),
                                start_new_session=True, cwd=workdir.name if workdir else "/")
    finally:
        os.close(job_fd)
        os.close(verdict_w)
    deadline = time.monotonic() + limits.timeout_s
    try:
        excerpt, verdict, abort = _read_until_done(proc, verdict_r, deadline, limits)
        if abort is None:  # both pipes closed; a program that closed them itself may still be running
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                abort = "timed out"
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group; the namespace dies with bwrap
            except ProcessLookupError:
                pass
            proc.wait()
        proc.stdout.close()
        os.close(verdict_r)
        if workdir is not None:
            workdir.cleanup()

    output = excerpt.decode("utf-8", "replace")
    if abort == "timed out":
        return SandboxResult("timed out", f"exceeded the {limits.timeout_s:g} s wall-clock limit", output)
    if abort == "output":
        return SandboxResult("failed", f"printed more than {limits.output_limit_bytes} bytes", output)
    marker = verdict.rfind(token + b" ")
    if marker >= 0:
        status, _, detail = verdict[marker + len(token) + 1:].decode("utf-8", "replace").partition(" ")
        if status == "passed":
            return SandboxResult("passed", "", output)
        if status == "memory":
            return SandboxResult("killed for memory", f"exceeded the {limits.memory_mb} MiB memory limit", output)
        if status == "failed":
            return SandboxResult("failed", detail, output)
    status, detail = _describe_exit(proc.returncode, sandboxed)
    return SandboxResult(status, detail, output)


@functools.lru_cache(maxsize=None)
def _sandbox_problem(python: str) -> str | None:
    """Why bwrap cannot run ``python`` here, with the remedy; None when it can."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: install it (Debian: apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv is not installed (as root it starts bwrap as nobody): install util-linux"
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        return f"the interpreter {python} does not exist or is not executable (pick another with --sandbox-python)"
    try:
        result = _run_one("pass", SandboxLimits(timeout_s=30.0), python, sandboxed=True)
    except OSError as error:
        return f"bwrap could not start ({error})"
    if result.passed:
        return None
    who = "the user nobody" if os.geteuid() == 0 else "this user"
    said = " ".join(result.output.split())[-300:] or result.detail
    return (f"bwrap could not run {python} ({said}): user namespaces must be allowed "
            f"(sysctl kernel.unprivileged_userns_clone=1) and the interpreter readable by {who} "
            "(pick another with --sandbox-python)")


def check_sandbox(python: str | None = None) -> None:
    """Raise SandboxUnavailable, saying why and what to do, when bwrap cannot run programs here."""
    problem = _sandbox_problem(python or default_python())
    if problem is not None:
        raise SandboxUnavailable(f"the sandbox cannot run here: {problem}; or pass --unsafe-no-sandbox to run "
                                 "model-written code without isolation")


def run_programs(programs: Sequence[str], *, timeout_s: float = 10.0, memory_mb: int = 1024,
                 workers: int | None = None, max_processes: int = 16, output_limit_bytes: int = 1 << 20,
                 python: str | None = None, unsafe_no_sandbox: bool = False) -> list[SandboxResult]:
    """Run each program in its own sandbox, ``workers`` at a time (default: 2 per core); results in input order.

    A program passes only when it runs to its end; raising anything (``SystemExit`` included),
    exiting early, dying by signal, or crossing a limit makes it fail. Raises SandboxUnavailable
    when bwrap cannot run, unless ``unsafe_no_sandbox`` (which keeps the rlimits, timeout and
    cleared environment but gives the program the whole machine).
    """
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes,
                           output_limit_bytes=output_limit_bytes)
    python = python or default_python()
    if unsafe_no_sandbox:
        warnings.warn("running model-written code WITHOUT a sandbox: it can read, change and send anything "
                      "this user can", RuntimeWarning, stacklevel=2)
    else:
        check_sandbox(python)
    # A sandboxed program spends much of its short life in namespace setup and teardown, waiting on
    # the kernel rather than computing, so two per core keep the cores busy.
    workers = 2 * (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda program: _run_one(program, limits, python, not unsafe_no_sandbox), programs))
