"""One live job per run directory, and workers that die with their launcher.

**The lock.** Global rank 0 holds ``<dir>/train.lock`` for the whole job: an exclusive POSIX
record lock (``fcntl.lockf``) on the file, which also names the holder (host, pid, start time). The
kernel drops the lock when the holder dies, however it dies, so:

- a second job on the directory cannot take the lock and refuses with one line naming the
  holder's host and pid;
- after a holder died (SIGKILL, node reboot) the next job takes the lock, says whose it was, and
  goes on: nothing else needs cleaning up.

A holder on another host is arbitrated the same way where the file system shares POSIX locks
between hosts (NFSv3 with lockd, NFSv4, Lustre mounted with ``flock``, GPFS); a mount that keeps
locks local to each client (NFS ``nolock``, Lustre ``localflock``) cannot see a job on another
host, so two nodes could then both hold the directory. On a file system without POSIX locks
(``lockf`` fails with ENOLCK, EOPNOTSUPP or ENOSYS) the file's contents decide: a holder on this
host whose process is gone is taken over (with no kernel to arbitrate, two jobs starting in the
same instant could both do so); a holder on another host cannot be checked from here, so the job
refuses and names the file to delete once that job is known to be gone. A clean exit leaves the file empty (a free lock); it is never deleted, because a job that
opened it just before the deletion would lock a file nobody else sees.

**Parent death.** ``die_with_launcher`` asks Linux to SIGKILL a worker when its parent, the
torchrun agent or DeepSpeed's per-node ``launch.py``, dies, so that killing the launcher never
leaves workers training. SIGKILL because a worker blocked in a collective never runs a Python
signal handler; checkpoints are written to survive it. Under the ``deepspeed`` command the parent
is ``launch.py``, which the command starts and stops on SIGINT/SIGTERM; a SIGKILL of the outer
command alone leaves ``launch.py`` running (kill its process group). srun and mpirun are left
alone: slurmstepd and Open MPI's daemons already kill their tasks when the step or job ends, and
the kernel ties the signal to the parent *thread*, which for them need not live as long as the
daemon. A process started by hand (``python -m megaphi.train``, or RANK/WORLD_SIZE exported by a
script) has a shell for a parent and must outlive it (``nohup``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from megaphi.common.processes import die_with_parent
from megaphi.train.launch_env import LaunchEnv, host_name

LOCK_FILE = "train.lock"
_NO_POSIX_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class RunDirLocked(RuntimeError):
    """Another live job holds the run directory; the message names it."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    process_start: str | None  # /proc start time: tells a live holder from a new process that reuses its pid
    since: str  # when it took the lock, for people

    @staticmethod
    def me() -> "Holder":
        return Holder(host_name(), os.getpid(), _process_start(os.getpid()), time.strftime("%Y-%m-%d %H:%M:%S %Z"))

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.since})"

    def is_dead_here(self) -> bool:
        """True only when this host can tell: the holder ran here and its process is gone."""
        if self.host != host_name():
            return False
        start = _process_start(self.pid)
        return start is None or (self.process_start is not None and start != self.process_start)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if none runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:  # elsewhere: only whether a process with this pid exists
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "alive"
    return stat.rsplit(")", 1)[1].split()[19]


class RunLock:
    """The lock file of one directory, held from :meth:`acquire` until :meth:`release` or process exit."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None
        self.previous: Holder | None = None  # a dead holder whose lock this one took over

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunDirLocked`; ``previous`` then names a dead holder taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            holder = self._read(fd)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    raise RunDirLocked(self._in_use(holder)) from None
                if e.errno not in _NO_POSIX_LOCKS:
                    raise
                # No POSIX locks here: the contents are all there is to go by.
                if holder is not None and not holder.is_dead_here():
                    raise RunDirLocked(
                        self._in_use(holder) + f"; this file system has no POSIX locks, so if that "
                        f"job is gone, delete {self.path}"
                    ) from None
            self.previous = holder
            me = json.dumps(asdict(Holder.me())).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, me, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _read(self, fd: int) -> Holder | None:
        raw = os.pread(fd, 4096, 0)
        if not raw.strip():
            return None  # free: never held, or released cleanly
        try:
            return Holder(**json.loads(raw))
        except (ValueError, TypeError):
            return Holder("unknown", -1, None, "unknown")  # torn by a crash mid-write, or not ours

    def _in_use(self, holder: Holder | None) -> str:
        who = holder.describe() if holder is not None else "a process that has not written its name yet"
        return (
            f"{self.path.parent} is in use by a live training job: {who}; wait for it to end or stop it, "
            "or choose another run_dir"
        )

    def release(self) -> None:
        """Mark the lock free (an empty file) and drop it."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the POSIX lock
        self._fd = None


def die_with_launcher(launch: LaunchEnv) -> bool:
    """Under torchrun or the deepspeed launcher on Linux, have the kernel SIGKILL this process when its
    parent dies; True if set (see the module docstring for the other launchers)."""
    if launch.launcher not in ("torchrun", "deepspeed"):
        return False
    return die_with_parent()
