"""How a job's sandboxes run to a verdict: ``ProgramSandbox`` runs a whole program, ``JudgingPair`` a
candidate and, apart from it, the tests that judge it. Both read their processes' output and the
verdict pipe within the job's time budget (CPU time of its cgroups, and a wall-clock bound), then
turn the verdict, the limit crossed or the way a process exited into a ``SandboxResult``."""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import time
import warnings
from typing import Callable, Sequence

from megaphi.eval.cgroup import CgroupTree
from megaphi.eval.sandbox_process import SandboxedProcess
from megaphi.eval.sandbox_types import JudgedProgram, SandboxLimits, SandboxResult

_VERDICT_LIMIT = 1 << 16
_CANDIDATE_EXIT_GRACE_S = 1.0  # a candidate that hung up is usually gone by then: its status says why


def _describe_exit(returncode: int, sandboxed: bool, who: str = "") -> tuple[str, str]:
    # bwrap reports a child killed by signal N as exit status 128 + N.
    signum = -returncode if returncode < 0 else (returncode - 128 if sandboxed and returncode > 128 else None)
    if signum == signal.SIGXCPU:
        return "timed out", "exceeded the CPU time limit"
    if signum is not None:
        name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
        return "failed", f"{who}killed by {name} before the end of the program"
    return "failed", f"{who}exited with status {returncode} before the end of the program"


class _TimeBudget:
    """When a sample has run out of time. Its sandboxes' CPU time (their cgroups) is held to
    ``timeout_s``, so that cores shared with other samples or jobs cost nobody a verdict; the wall
    clock, to ``wall_factor`` times that, for what waits or sleeps. Without cgroups (unsafe mode) the
    wall clock alone is held to ``timeout_s``."""

    _POLL_S = 0.05

    def __init__(self, processes: Sequence[SandboxedProcess], limits: SandboxLimits):
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
    processes: Sequence[SandboxedProcess],
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


def _drain_rest(process: SandboxedProcess, limits: SandboxLimits) -> None:
    """What a killed process left in its output pipe."""
    os.set_blocking(process.output, False)
    try:
        while chunk := os.read(process.output, 1 << 16):
            if not process.take_output(chunk, limits):
                break
    except BlockingIOError:
        pass


def _excerpt(processes: Sequence[SandboxedProcess], limits: SandboxLimits) -> str:
    """The processes' excerpts in order, the last one (the test's traceback) kept whole within the cap."""
    parts = [bytes(p.excerpt) for p in processes]
    last = parts[-1][: limits.output_excerpt_bytes]
    head = b"".join(parts[:-1])[: limits.output_excerpt_bytes - len(last)]
    return (head + last).decode("utf-8", "replace")


def _finish(processes: Sequence[SandboxedProcess], limits: SandboxLimits) -> bool:
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


class ProgramSandbox:
    """One sandbox for a whole program, started before its program is known."""

    def __init__(self, limits: SandboxLimits, python: str, tree: CgroupTree | None):
        self.limits, self.sandboxed = limits, tree is not None
        self.verdict_r, verdict_w = os.pipe()
        try:
            self.process = SandboxedProcess("program", [verdict_w], limits, python, tree)
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


class JudgingPair:
    """A candidate sandbox and a test sandbox joined by two call pipes, started before their job is known."""

    def __init__(self, limits: SandboxLimits, python: str, tree: CgroupTree | None):
        self.limits, self.sandboxed = limits, tree is not None
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        self.verdict_r, verdict_w = os.pipe()
        self.processes: list[SandboxedProcess] = []
        try:
            self.processes.append(SandboxedProcess("candidate", [requests_r, replies_w], limits, python, tree))
            self.processes.append(SandboxedProcess("test", [requests_w, replies_r, verdict_w], limits, python, tree))
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
