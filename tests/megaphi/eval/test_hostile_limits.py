"""Hostile completions that attack the sandbox's resource limits.

Each attack runs as the candidate's module-level code and must be held by a named limit (memory of
every kind, /tmp, file size and descriptors, processes, the seccomp filter, time, the OOM killer's
choice). Honest samples scored in the same batch keep their verdicts, and nothing is left running.
"""

from pathlib import Path

import pytest

from tests.megaphi.eval.sandbox_attacks import (
    FORK_BOMB,
    LIBC,
    NUMBERS,
    judge_beside_honest,
    surviving_sandbox_processes,
)

MEMORY_MB = 256

LIMIT_ATTACKS = {
    "memfd pages past the memory limit": """
import os
chunk, held = b"x" * (8 << 20), []
for total in range(8, 1024, 8):  # many memfds, each under the file-size limit
    held.append(os.memfd_create("hog"))
    os.write(held[-1], chunk)
    print("memfd MiB", total, flush=True)
""",
    "SysV shared memory past the memory limit": LIBC
    + """
libc.shmget.restype, libc.shmat.restype = ctypes.c_int, ctypes.c_void_p
libc.shmat.argtypes, libc.shmdt.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int], [ctypes.c_void_p]
for total in range(16, 1024, 16):  # segments outlive their mapping: only the cgroup sees them all
    address = libc.shmat(libc.shmget(0, 16 << 20, 0o1600), None, 0)
    ctypes.memset(address, 1, 16 << 20)
    libc.shmdt(address)
    print("shm MiB", total, flush=True)
""",
    "several processes that each stay under the address-space limit": """
import os, time
for _ in range(6):
    if os.fork() == 0:
        hog = b"x" * (100 << 20)
        print("child holds 100 MiB", flush=True)
        time.sleep(60)
time.sleep(60)
""",
    "/tmp past its size cap": """
written = 0
try:
    for part in range(16):  # files under the file-size limit, together past the /tmp cap
        with open(f"/tmp/fill{part}", "wb") as f:
            for _ in range(8):
                f.write(b"x" * (1 << 20))
                f.flush()
                written += 1
except OSError as error:
    print("tmp stopped at MiB", written, error.errno, flush=True)
""",
    "a file past the file-size limit": """
try:
    with open("/tmp/big", "wb") as f:
        f.write(b"x" * (32 << 20))
except OSError as error:
    print("fsize refused errno", error.errno, flush=True)
""",
    "file descriptors past the open-file limit": """
handles = []
try:
    while len(handles) < 5000:
        handles.append(open("/dev/null"))
except OSError as error:
    print("nofile stopped at", len(handles), error.errno, flush=True)
""",
    "processes past the pids limit": """
import os, time
started = 0
try:
    for _ in range(64):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        started += 1
except OSError as error:
    print("pids stopped at", started, error.errno, flush=True)
""",
    "fork bomb": FORK_BOMB,
    "ptrace of the sandbox's init and of itself": LIBC
    + """
print("ptrace init", libc.ptrace(16, 1, None, None), ctypes.get_errno(), flush=True)
print("ptrace traceme", libc.ptrace(0, 0, None, None), ctypes.get_errno(), flush=True)
""",
    "process_vm_readv of another process": LIBC
    + f"""
print("process_vm_readv", libc.syscall({NUMBERS["process_vm_readv"]}, 1, None, 0, None, 0, 0),
      ctypes.get_errno(), flush=True)
""",
    "a nested user namespace, by unshare and by clone": LIBC
    + f"""
print("unshare user", libc.unshare(0x10000000), ctypes.get_errno(), flush=True)
print("unshare mount", libc.unshare(0x20000), ctypes.get_errno(), flush=True)
print("clone user", libc.syscall({NUMBERS["clone"]}, 0x10000000 | 17, None, None, None, None),
      ctypes.get_errno(), flush=True)
""",
    "mounting a tmpfs of its own": LIBC
    + """
print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, b"size=10g"), ctypes.get_errno(), flush=True)
""",
    "daemonizes to outlive the sample": """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(600)
    os._exit(0)
""",
    "reads its own OOM score adjustment": """
print("oom_score_adj", open("/proc/self/oom_score_adj").read().strip(), flush=True)
""",
    "hangs forever ignoring signals": """
import signal, time
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
    signal.signal(sig, signal.SIG_IGN)
while True:
    time.sleep(0.1)
""",
}


@pytest.fixture(scope="module")
def limit_run():
    return judge_beside_honest(LIMIT_ATTACKS, MEMORY_MB, workers=4)


def _lines(result, prefix):
    return [line.split() for line in result.output.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize(
    "name",
    [
        "memfd pages past the memory limit",
        "SysV shared memory past the memory limit",
        "several processes that each stay under the address-space limit",
    ],
)
def test_memory_of_every_kind_counts_against_the_limit(limit_run, name):
    result = limit_run["attacks"][name]
    assert not result.passed
    assert 0 < result.memory_peak_bytes <= MEMORY_MB << 20
    held = [int(words[-1]) for words in _lines(result, "memfd MiB") + _lines(result, "shm MiB")]
    assert max(held, default=0) < MEMORY_MB


def test_tmp_file_size_and_descriptor_limits_hold(limit_run):
    attacks = limit_run["attacks"]
    [[*_, written, errno_tmp]] = _lines(attacks["/tmp past its size cap"], "tmp stopped at")
    assert int(written) <= 64 and int(errno_tmp) == 28  # ENOSPC at the 64 MiB cap
    assert attacks["/tmp past its size cap"].memory_peak_bytes >= 60 << 20  # and its pages count as memory
    assert _lines(attacks["a file past the file-size limit"], "fsize refused") == [["fsize", "refused", "errno", "27"]]
    [[*_, opened, errno_files]] = _lines(attacks["file descriptors past the open-file limit"], "nofile stopped at")
    assert int(opened) < 256 and int(errno_files) == 24  # EMFILE


def test_the_seccomp_filter_refuses_ptrace_process_vm_namespaces_and_mounts(limit_run):
    attacks = limit_run["attacks"]
    eperm = "1"
    refused = (
        _lines(attacks["ptrace of the sandbox's init and of itself"], "ptrace")
        + _lines(attacks["process_vm_readv of another process"], "process_vm_readv")
        + _lines(attacks["a nested user namespace, by unshare and by clone"], "unshare")
        + _lines(attacks["a nested user namespace, by unshare and by clone"], "clone")
        + _lines(attacks["mounting a tmpfs of its own"], "mount")
    )
    assert len(refused) == 7
    assert all(words[-2:] == ["-1", eperm] for words in refused), refused


def test_a_fork_bomb_and_a_hang_end_as_that_sample_s_failure(limit_run):
    attacks = limit_run["attacks"]
    [[*_, started, errno_pids]] = _lines(attacks["processes past the pids limit"], "pids stopped at")
    assert int(started) < 16 and int(errno_pids) == 11  # EAGAIN: 16 processes and threads per sandbox
    assert attacks["hangs forever ignoring signals"].status == "timed out"
    assert not attacks["fork bomb"].passed


def test_sandboxes_are_the_oom_killer_s_first_choice_and_the_scorer_its_last(limit_run):
    assert _lines(limit_run["attacks"]["reads its own OOM score adjustment"], "oom_score_adj") == [
        ["oom_score_adj", "1000"]
    ]
    # The scorer goes as low as it may: -1000 with CAP_SYS_RESOURCE, else where it was (never raised).
    status = Path("/proc/self/status").read_text().splitlines()
    capabilities = int(next(line for line in status if line.startswith("CapEff")).split()[1], 16)
    own = int(Path("/proc/self/oom_score_adj").read_text())
    assert (own == -1000) if capabilities & (1 << 24) else (own <= 0)


def test_honest_samples_beside_the_attacks_keep_their_verdicts_and_nothing_is_left_running(limit_run):
    assert [r.status for r in limit_run["honest"]] == ["passed", "failed"]
    assert surviving_sandbox_processes() == []
    assert limit_run["attacks"]["daemonizes to outlive the sample"].passed  # it ran to its end; its daemon did not
