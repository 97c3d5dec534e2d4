"""Attacks on the judging sandbox beyond the hostile suite, each asserting the concrete safe outcome.

Most attacks run as a candidate's module-level code in one batch (``judged_attack``: the test then asks an
honest question, so a sample that is not contained would pass); honest samples are judged beside
them, and nothing may be left running afterwards. Then: replies forged on the reply pipe against
the codec and the test process, and two samples judged at once that share a per-user kernel count.
(A neighbour that fills the scorer's own memory group: test_sandbox_pool.py.)
"""

import os

import pytest

from megaphi.eval.sandbox import JudgedProgram, judge_programs
from tests.megaphi.eval.sandbox_attacks import (
    LIBC,
    NUMBERS,
    judge_beside_honest,
    judged_attack,
    surviving_sandbox_processes,
)

MEMORY_MB = 128
MARKER = "megaphi-red-team-" + os.urandom(4).hex()


# Kernel buffers that a socket holds for data nobody reads: what the cgroup must count (or refuse).
_SOCKET_FILL = """
import socket
queued, held, target = 0, [], {target}
chunk = b"x" * (1 << 16)
try:
    while queued < target:
        {make_pair}
        for s in pair:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        writer = pair[0]
        writer.setblocking(False)
        held += pair
        try:
            while queued < target:
                queued += writer.send(chunk)
        except BlockingIOError:
            pass
except OSError as error:
    print("{name} stopped", error.errno, flush=True)
print("{name} queued MiB", queued >> 20, flush=True)
"""
_TCP_PAIR = """server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        pair = [client, server.accept()[0]]
        server.close()"""

ATTACKS = {
    # The OOM killer's first choice only while the sandbox cannot take the 1000 back.
    "lowers its own OOM score adjustment": """
for value in ("0", "-1000"):
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(value)
    except OSError:
        pass
print("oom_score_adj", open("/proc/self/oom_score_adj").read().strip(), flush=True)
""",
    # Loopback TCP buffers: cgroup v1 does not charge them to the memory limit.
    "queues three times its memory limit in loopback TCP buffers": _SOCKET_FILL.format(
        name="tcp", target=3 * MEMORY_MB << 20, make_pair=_TCP_PAIR
    ),
    # AF_UNIX buffers are charged to the memory cgroup: the limit holds (or the kernel refuses).
    "queues three times its memory limit in unix socket buffers": _SOCKET_FILL.format(
        name="unix", target=3 * MEMORY_MB << 20, make_pair="pair = list(socket.socketpair())"
    ),
    # Netlink replies the sandbox asks for and never reads: cgroup v1 does not charge them either.
    "queues twice its memory limit in netlink replies": f"""
import socket, struct
queued, held, target = 0, [], {2 * MEMORY_MB << 20}
request = struct.pack("=LHHLL", 32, 18, 1, 0, 0) + struct.pack("=BBHiII", 0, 0, 0, 1, 0, 0)  # RTM_GETLINK of lo
try:
    while queued < target:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        held.append(s)
        for _ in range(7000):
            s.send(request)
        queued += struct.unpack("=9I", s.getsockopt(socket.SOL_SOCKET, 55, 36))[0]  # SO_MEMINFO: rmem_alloc
except OSError as error:
    print("netlink stopped", error.errno, flush=True)
print("netlink queued MiB", queued >> 20, flush=True)
""",
    # Pseudo-terminals are counted host-wide (kernel.pty.max, shared with every container), by no cgroup.
    "opens pseudo-terminals": """
import os
held = []
try:
    while len(held) < 8:
        held.append(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
except OSError as error:
    print("pty stopped", error.errno, flush=True)
print("ptys opened", len(held), flush=True)
""",
    # Linux AIO events are counted host-wide (fs.aio-max-nr, 65536): one io_setup can take them all.
    "takes the host's whole Linux AIO event budget": LIBC
    + f"""
context = ctypes.c_ulong(0)
print("aio io_setup", libc.syscall({NUMBERS["io_setup"]}, 65536, ctypes.byref(context)), ctypes.get_errno(), flush=True)
""",
    "takes a real-time scheduling class or a higher priority": """
import os
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    print("priority SCHED_FIFO taken", flush=True)
except OSError:
    print("priority SCHED_FIFO refused", flush=True)
try:
    os.nice(-1)
    print("priority nice taken", flush=True)
except OSError:
    print("priority nice refused", flush=True)
""",
    "queues three times its memory limit in unix datagrams": f"""
import socket
queued, held, target = 0, [], {3 * MEMORY_MB << 20}
try:
    while queued < target:
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in pair:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setblocking(False)
        held += pair
        try:
            while queued < target:
                queued += pair[0].send(b"x" * (1 << 20))
        except BlockingIOError:
            pass
except OSError as error:
    print("dgram stopped", error.errno, flush=True)
print("dgram queued MiB", queued >> 20, flush=True)
""",
    "raises its hard resource limits": """
import resource
for name in ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_CORE"):
    kind = getattr(resource, name)
    try:
        resource.setrlimit(kind, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("raised", name, flush=True)
    except (ValueError, OSError):
        print("kept", name, flush=True)
""",
    # Calls the filter names, and the ways around it: clone3 (flags in memory), CLONE_NEWTIME, setns.
    "system calls past the seccomp filter": LIBC
    + "".join(
        f"print('syscall {name}', libc.syscall({NUMBERS[name]}, {args}), ctypes.get_errno(), flush=True)\n"
        for name, args in [
            ("clone3", "None, 0"),
            ("unshare", "0x80"),
            ("setns", "0, 0"),
            ("io_uring_setup", "8, None"),
            ("userfaultfd", "0"),
            ("bpf", "0, None, 0"),
            ("perf_event_open", "None, 0, -1, -1, 0"),
            ("keyctl", "0, 0"),
            ("add_key", "None, None, None, 0, 0"),
            ("pidfd_getfd", "0, 0, 0"),
            ("open_tree", "-100, None, 0"),
            ("fsopen", "None, 0"),
            ("memfd_secret", "0"),
            ("kcmp", "0, 0, 0, 0, 0"),
        ]
    ),
    "a core dump after making itself dumpable": LIBC
    + """
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
os.kill(os.getpid(), 11)
""",
    "kills every process it can signal": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    # A daemon that keeps printing after the (honest) answer has been given.
    "a daemon prints without end after answering": """
import os, sys
if os.fork() == 0:
    os.setsid()
    while True:
        try:
            os.write(1, b"spam" * 1000)
        except OSError:
            pass
""",
    "leaves a file in /tmp for the next sample": f"open('/tmp/{MARKER}', 'w').write('left behind')\n",
}
# Judged after the attacks: a sample that sees what another one left gives a wrong answer.
PROBES = {
    "finds another sample's /tmp file": f"import os\nif os.path.exists('/tmp/{MARKER}'):\n    raise SystemExit(1)\n",
}


@pytest.fixture(scope="module")
def red_team_run():
    return judge_beside_honest({**ATTACKS, **PROBES}, MEMORY_MB, workers=2)


def _lines(result, prefix):
    return [line.split() for line in result.output.splitlines() if line.startswith(prefix)]


def test_a_sandbox_cannot_lower_its_oom_score_adjustment(red_team_run):
    assert _lines(red_team_run["attacks"]["lowers its own OOM score adjustment"], "oom_score_adj") == [
        ["oom_score_adj", "1000"]
    ]


def test_loopback_tcp_buffers_cannot_hold_memory_past_the_limit(red_team_run):
    result = red_team_run["attacks"]["queues three times its memory limit in loopback TCP buffers"]
    queued = [int(words[-1]) for words in _lines(result, "tcp queued MiB")]
    # cgroup v1 would not count these buffers: the seccomp filter refuses every socket but AF_UNIX.
    assert _lines(result, "tcp stopped") == [["tcp", "stopped", "97"]], result.output  # EAFNOSUPPORT
    assert queued == [0], result.output


def test_netlink_replies_cannot_hold_memory_past_the_limit(red_team_run):
    result = red_team_run["attacks"]["queues twice its memory limit in netlink replies"]
    queued = [int(words[-1]) for words in _lines(result, "netlink queued MiB")]
    assert _lines(result, "netlink stopped") == [["netlink", "stopped", "97"]] and queued == [0], result.output


def test_unix_socket_buffers_count_against_the_memory_limit(red_team_run):
    result = red_team_run["attacks"]["queues three times its memory limit in unix socket buffers"]
    queued = [int(words[-1]) for words in _lines(result, "unix queued MiB")]
    assert result.status == "killed for memory" or max(queued, default=0) < MEMORY_MB, (result.status, queued)


def test_no_pseudo_terminal_can_be_opened(red_team_run):
    result = red_team_run["attacks"]["opens pseudo-terminals"]
    assert _lines(result, "pty stopped") == [["pty", "stopped", "2"]], result.output  # ENOENT: no /dev/ptmx
    assert _lines(result, "ptys opened") == [["ptys", "opened", "0"]], result.output


def test_no_linux_aio_context_can_be_set_up(red_team_run):
    lines = _lines(red_team_run["attacks"]["takes the host's whole Linux AIO event budget"], "aio")
    assert lines == [["aio", "io_setup", "-1", "1"]], lines  # EPERM


def test_no_real_time_class_or_higher_priority_can_be_taken(red_team_run):
    lines = _lines(red_team_run["attacks"]["takes a real-time scheduling class or a higher priority"], "priority")
    assert lines == [["priority", "SCHED_FIFO", "refused"], ["priority", "nice", "refused"]], lines


def test_unix_datagrams_count_against_the_memory_limit(red_team_run):
    result = red_team_run["attacks"]["queues three times its memory limit in unix datagrams"]
    queued = [int(words[-1]) for words in _lines(result, "dgram queued MiB")]
    assert result.status == "killed for memory" or max(queued, default=0) < MEMORY_MB, (result.status, queued)


def test_hard_resource_limits_cannot_be_raised(red_team_run):
    lines = _lines(red_team_run["attacks"]["raises its hard resource limits"], "")
    assert len(lines) == 6 and all(words[0] == "kept" for words in lines), lines


def test_calls_around_the_seccomp_filter_are_refused(red_team_run):
    lines = _lines(red_team_run["attacks"]["system calls past the seccomp filter"], "syscall")
    errnos = {words[1]: (int(words[2]), int(words[3])) for words in lines}
    assert len(errnos) == 14, lines
    assert errnos.pop("clone3") == (-1, 38)  # ENOSYS: the C library falls back to clone, which is checked
    assert all(value == (-1, 1) for value in errnos.values()), errnos  # EPERM


def test_a_core_dump_fails_the_sample_and_leaves_no_core_file(red_team_run):
    result = red_team_run["attacks"]["a core dump after making itself dumpable"]
    assert result.status == "failed" and "SIGSEGV" in result.detail, result
    assert not any(name.startswith("core") for name in os.listdir("."))


def test_killing_every_visible_process_fails_only_that_sample(red_team_run):
    result = red_team_run["attacks"]["kills every process it can signal"]
    assert not result.passed
    assert [r.status for r in red_team_run["honest"]] == ["passed", "failed"]


def test_a_printing_daemon_does_not_outlive_or_change_an_honest_answer(red_team_run):
    result = red_team_run["attacks"]["a daemon prints without end after answering"]
    assert result.status in ("passed", "failed"), result  # its own verdict; the daemon is killed with it
    assert surviving_sandbox_processes() == []


def test_no_sample_sees_another_sample_s_tmp(red_team_run):
    assert red_team_run["attacks"]["leaves a file in /tmp for the next sample"].passed
    assert red_team_run["attacks"]["finds another sample's /tmp file"].passed
    assert not os.path.exists(f"/tmp/{MARKER}")


# Replies written straight to the reply pipe (the candidate's last argument), past what the codec
# accepts or what the test process can hold; and plain values the codec must carry exactly.
_FORGE = """
import os, sys
def answer():
    frame = {frame}
    os.write(int(sys.argv[-1]), len(frame).to_bytes(4, "big") + frame)
    return 42
"""


def _forged_reply(frame: str) -> JudgedProgram:
    """A candidate whose ``answer`` writes ``frame`` on the reply pipe itself, then returns 42."""
    return JudgedProgram(
        candidate=_FORGE.format(frame=frame),
        prompt="",
        tests="assert answer() == 42\n",
        entry_points=("answer",),
    )


CODEC_JOBS = {
    "a reply nested a million levels deep": _forged_reply(
        "b'[\"return\",' + b'[' * 1_000_000 + b']' * 1_000_000 + b',[]]'"
    ),
    # 10 million one-item lists in 60 MiB: over a gigabyte once parsed, in a 128 MiB test sandbox.
    "a wide reply that the test process cannot hold": _forged_reply(
        "b'[\"return\",[\"l\"' + b',[\"l\"]' * 10_000_000 + b'],[]]'"
    ),
    # Ints equal modulo 2**61 - 1 share one hash: decoding this set costs the test process n**2 steps
    # (the candidate writes it in linear time).
    "a set of colliding hashes": _forged_reply(
        'b\'["return",["s",\' + b\',\'.join(b\'["i","%x"]\' % (k * (2**61 - 1)) '
        "for k in range(1, 100_000)) + b'],[]]'"
    ),
    # The exact numbers of the standard library: a signaling NaN, and a fraction over zero.
    "a signaling-NaN Decimal": _forged_reply('b\'["return",["e","sNaN"],[]]\''),
    "a Fraction over zero": _forged_reply('b\'["return",["q",42,0],[]]\''),
    "NaN, -0.0, infinity, a lone surrogate and a big int cross exactly": JudgedProgram(
        candidate=(
            "def answer():\n    return [float('nan'), -0.0, float('inf'), '\\ud800', 2**200, 1+2j, {'b': 1, 'a': 2}]\n"
        ),
        prompt="import math\n",
        tests=(
            "v = answer()\nassert math.isnan(v[0]) and math.copysign(1, v[1]) == -1 and v[2] == math.inf\n"
            "assert v[3] == '\\ud800' and v[4] == 2**200 and v[5] == 1+2j and list(v[6]) == ['b', 'a']\n"
        ),
        entry_points=("answer",),
    ),
}


@pytest.fixture(scope="module")
def codec_run():
    results = judge_programs(
        list(CODEC_JOBS.values()) + [judged_attack("")], timeout_s=3.0, memory_mb=MEMORY_MB, workers=2
    )
    return dict(zip([*CODEC_JOBS, "honest"], results, strict=True))


def test_a_recursion_bomb_in_a_reply_fails_as_a_protocol_error(codec_run):
    result = codec_run["a reply nested a million levels deep"]
    assert result.status == "failed" and "broke the protocol" in result.detail, result


def test_a_reply_too_big_to_hold_fails_its_own_sample_only(codec_run):
    assert not codec_run["a wide reply that the test process cannot hold"].passed
    assert codec_run["honest"].passed


def test_a_slow_to_decode_reply_spends_the_sample_s_own_time(codec_run):
    assert codec_run["a set of colliding hashes"].status == "timed out", codec_run["a set of colliding hashes"]


def test_exact_numbers_that_cannot_be_compared_or_built_fail(codec_run):
    decimal_result, fraction_result = codec_run["a signaling-NaN Decimal"], codec_run["a Fraction over zero"]
    assert decimal_result.status == "failed" and "InvalidOperation" in decimal_result.detail, decimal_result
    assert fraction_result.status == "failed" and "broke the protocol" in fraction_result.detail, fraction_result


def test_edge_values_cross_the_codec_exactly(codec_run):
    result = codec_run["NaN, -0.0, infinity, a lone surrogate and a big int cross exactly"]
    assert result.passed, result
    assert surviving_sandbox_processes() == []


# Kernel counts kept per user (inotify instances: 128 per user, in each user namespace and in every
# one above it): two samples judged at once must not share them.
_HOG_INOTIFY = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
held = [fd for fd in (libc.inotify_init1(0) for _ in range(200)) if fd >= 0]
print("hog holds", len(held), flush=True)
time.sleep(4)
"""
_NEEDS_INOTIFY = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
time.sleep(1.5)
failures = 0
for _ in range(10):
    fd = libc.inotify_init1(0)
    failures += fd < 0
    if fd >= 0:
        libc.close(fd)
    time.sleep(0.1)
print("inotify failures", failures, flush=True)
"""


def test_a_per_user_kernel_count_one_sample_exhausts_stays_available_to_another():
    hog, victim = judge_programs(
        [judged_attack(_HOG_INOTIFY), judged_attack(_NEEDS_INOTIFY)], timeout_s=6.0, memory_mb=MEMORY_MB, workers=2
    )
    assert _lines(hog, "hog holds") == [["hog", "holds", "128"]], hog.output
    assert _lines(victim, "inotify failures") == [["inotify", "failures", "0"]], victim.output
