"""The bwrap command line a sandbox starts with: what it sees (a read-only root of the interpreter's
files, an empty size-capped ``/tmp``, no network, no capabilities, no new user namespaces, the
seccomp filter), as whom it runs (a host user of its own when this process is root), and the
runner it is given (compiled once per interpreter, run from a memfd)."""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
from pathlib import Path

from megaphi.eval.sandbox_types import SandboxLimits, SandboxUnavailable

_RUNNER_SOURCE = (Path(__file__).with_name("sandbox_runner.py")).read_text(encoding="utf-8")
# As root, each sandbox runs as a host user of its own from this block (unused by systemd's ranges):
# the kernel keeps some counts per user (inotify instances, POSIX message queue bytes, queued
# signals, file descriptors in flight), and a shared user would let one sample use up another's.
_SANDBOX_UIDS = 0x7FFE0000
_SANDBOX_UID_COUNT = 1 << 16
_sandbox_uids = itertools.count()
SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


def default_python() -> str:
    """The system interpreter (a plain Python with nothing of this project) or, lacking one, this
    Python's base interpreter (outside any virtual environment)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


# Each sandbox would spend longer compiling the runner's source than running it: it receives the
# runner compiled once, by its own interpreter (marshal's format is specific to a Python version).
BOOTSTRAP = "import marshal,os,sys;f=int(sys.argv.pop(1));c=os.read(f,1<<24);os.close(f);exec(marshal.loads(c))"


@functools.lru_cache(maxsize=None)
def runner_code(python: str) -> bytes:
    compiler = (
        "import marshal,sys;"
        "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.buffer.read(),'<sandbox_runner>','exec')))"
    )
    done = subprocess.run(
        [python, "-I", "-S", "-c", compiler],
        input=_RUNNER_SOURCE.encode("utf-8"),
        capture_output=True,
        env=dict(SANDBOX_ENV),
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


def drop_root() -> list[str]:
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


def bwrap_prefix(python: str, limits: SandboxLimits, seccomp_fd: int) -> list[str]:
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
