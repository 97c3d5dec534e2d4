"""What the attack suites (test_sandbox, test_hostile, test_red_team) share: an attack judged as a
candidate's module-level code, the honest samples judged beside the attacks, and the check that
nothing of a sandbox is left afterwards."""

import os
import platform
from pathlib import Path

import psutil

from megaphi.eval import cgroup
from megaphi.eval.sandbox import JudgedProgram, SandboxResult, judge_programs
from megaphi.eval.seccomp import _SYSCALLS

# This machine's system call numbers, for attacks that go around the C library's wrappers.
NUMBERS = _SYSCALLS.get(platform.machine(), _SYSCALLS["x86_64"])
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def surviving_sandbox_processes() -> list[int]:
    """Processes left in a sandbox cgroup of this test process (daemons included: a cgroup is never
    left by reparenting), bwrap children of it, and sandbox cgroups of it that were not removed."""
    mine = f"megaphi-sandbox-{os.getpid()}-"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mine in Path(f"/proc/{pid}/cgroup").read_text():
                found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    found += [p.pid for p in psutil.Process().children(recursive=True) if p.name() == "bwrap"]
    parents = set(cgroup.cgroup_tree().parents.values())
    return found + [name for parent in parents for name in os.listdir(parent) if name.startswith(mine)]


def judged_attack(attack: str) -> JudgedProgram:
    """``attack`` runs as the candidate's module-level code; the test asks an honest question after it."""
    return JudgedProgram(
        candidate=attack + "\ndef answer():\n    return 42\n",
        prompt="",
        tests="assert answer() == 42\n",
        entry_points=("answer",),
    )


def judge_beside_honest(attacks: dict[str, str], memory_mb: int, workers: int) -> dict:
    """Judge each attack in one batch, then two honest samples (a right and a wrong answer); returns
    {"attacks": {name: result}, "honest": [right answer's result, wrong answer's result]}."""
    honest = [
        judged_attack(""),
        JudgedProgram(
            candidate="def answer():\n    return 41\n",
            prompt="",
            tests="assert answer() == 42\n",
            entry_points=("answer",),
        ),
    ]
    jobs = [judged_attack(attack) for attack in attacks.values()] + honest
    results: list[SandboxResult] = judge_programs(jobs, timeout_s=3.0, memory_mb=memory_mb, workers=workers)
    return {
        "attacks": dict(zip(attacks, results[: len(attacks)], strict=True)),
        "honest": results[len(attacks) :],
    }
