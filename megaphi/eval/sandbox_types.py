"""What the sandbox promises and reports: the limits it enforces, the result of one program or judged
sample, the job the scorer judges, and the error when it cannot run here (see ``sandbox``)."""

from __future__ import annotations

from dataclasses import dataclass

from megaphi.common.errors import UserError

STATUSES = ("passed", "failed", "timed out", "killed for memory")


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
