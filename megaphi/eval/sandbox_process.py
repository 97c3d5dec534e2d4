"""One runner process in its own bwrap sandbox and cgroup: started before its job is known, handed
the job on a pipe, its output read on another, and killed with everything it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from typing import Sequence

from megaphi.eval.bwrap import BOOTSTRAP, SANDBOX_ENV, bwrap_prefix, drop_root, runner_code
from megaphi.eval.cgroup import CgroupLimits, CgroupTree
from megaphi.eval.sandbox_types import SandboxLimits
from megaphi.eval.seccomp import filter_program


def _memfd(name: str, data: bytes) -> int:
    """Inherited by the sandbox, never a path."""
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class SandboxedProcess:
    """One runner process in its own bwrap and cgroup (or, unsafely, neither); its output on a pipe."""

    def __init__(self, role: str, fds: Sequence[int], limits: SandboxLimits, python: str, tree: CgroupTree | None):
        self.sandboxed = tree is not None
        self.cgroup, self.workdir = None, None
        self.excerpt, self.printed = bytearray(), 0
        # The runner and the seccomp program travel as memfds, the job (given later, see deliver) on a
        # pipe, so that the sandbox can start before its job is known.
        job_r, self.job_w = os.pipe()
        inherited = [_memfd("megaphi-sandbox-runner", runner_code(python)), job_r]
        own_fds = list(inherited)
        try:
            command = [
                python,
                "-I",
                "-S",
                "-c",
                BOOTSTRAP,
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
                command = self.cgroup.join_command(drop_root() + bwrap_prefix(python, limits, seccomp_fd) + command)
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
                    env=dict(SANDBOX_ENV),
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
