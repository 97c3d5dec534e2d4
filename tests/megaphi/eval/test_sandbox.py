"""The sandbox holds hostile programs: each attack below would make its program pass if it worked."""

import os
import re
import socket
import time

import pytest

from megaphi.eval import cgroup, sandbox
from megaphi.eval.sandbox import JudgedProgram, SandboxUnavailable, judge_programs, run_programs
from tests.megaphi.eval.sandbox_attacks import FORK_BOMB, surviving_sandbox_processes

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TIMEOUT_S = 3.0


def hostile_programs(host_dir, port, secret_name):
    heartbeat = host_dir / "daemon-heartbeat"
    return {
        "writes outside /tmp": f"""
import os
written = []
for path in [{str(host_dir / "pwned")!r}, {os.path.join(CHECKOUT, "PWNED")!r}, "/usr/pwned", "/etc/pwned", "/pwned",
             "/dev/shm/pwned", "/proc/pwned"]:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        written.append(path)
    except OSError:
        pass
open("/tmp/private", "w").write("this one is allowed")
assert written, "nothing outside the private /tmp was writable"
""",
        "reads the caller's files": f"""
import os
seen = [p for p in [{CHECKOUT!r}, {str(host_dir)!r}, "/root", "/home", "/etc/passwd", "/etc/shadow"] if os.path.exists(p)]
assert seen, "none of the caller's files is visible"
""",
        "connects to a listener on the host's loopback": f"""
import socket
socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leaked")
""",
        "reaches the internet": """
import socket
socket.create_connection(("1.1.1.1", 53), timeout=2)
""",
        "reads an environment secret": f"""
import glob, os
print(dict(os.environ))
found = [p for p in glob.glob("/proc/*/environ") if {secret_name!r}.encode() in open(p, "rb").read()]
assert {secret_name!r} in os.environ or found, "the caller's environment is not visible"
""",
        "fork bomb": FORK_BOMB,
        "allocates far more than the memory limit at once": "hog = bytearray(64 << 30)\n",
        # bytes(n) is calloc'ed, so the address space runs out fast even on a busy machine.
        "grows memory until it runs out": "hog = []\nwhile True:\n    hog.append(bytes(32 << 20))\n",
        "spins forever ignoring SIGTERM and SIGXCPU": """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGXCPU, signal.SIG_IGN)
while True:
    pass
""",
        "sleeps forever ignoring signals": """
import signal, time
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
while True:
    time.sleep(0.1)
""",
        "daemonizes to outlive the run": f"""
import os, time
if os.fork():
    os._exit(0)  # the classic daemon: the original process leaves at once
os.setsid()
if os.fork():
    os._exit(0)
for _ in range(600):  # the daemon: a minute of heartbeats, should it survive
    try:
        open({str(heartbeat)!r}, "a").write("alive")
    except OSError:
        pass
    time.sleep(0.1)
""",
        "closes its output and verdict descriptors and spins": (
            "import os\nfor fd in range(1, 256):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n"
            "while True:\n    pass\n"
        ),
        "floods its output": "while True:\n    print('x' * 10000)\n",
        "floods its error stream": "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)\n",
        "kills its parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "kills every process it can see": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    }


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    host_dir = tmp_path_factory.mktemp("host")
    (host_dir / "canary").write_text("untouched")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    secret_name, secret_value = "MEGAPHI_SANDBOX_TEST_SECRET", "s3cr3t-" + os.urandom(8).hex()
    os.environ[secret_name] = secret_value
    try:
        programs = hostile_programs(host_dir, listener.getsockname()[1], secret_name)
        results = run_programs(list(programs.values()), timeout_s=TIMEOUT_S, memory_mb=512, workers=4)
        time.sleep(0.3)  # a surviving daemon would write its heartbeat by now
    finally:
        del os.environ[secret_name]
    listener.setblocking(False)
    try:
        connection, _ = listener.accept()
        connection.close()
        connected = True
    except BlockingIOError:
        connected = False
    listener.close()
    return {
        "results": dict(zip(programs, results, strict=True)),
        "host_dir": host_dir,
        "connected": connected,
        "secret": secret_value,
    }


@pytest.mark.slow
def test_every_hostile_program_is_reported_failed(hostile_run):
    statuses = {name: (r.status, r.detail) for name, r in hostile_run["results"].items()}
    assert all(status != "passed" for status, _ in statuses.values()), statuses


@pytest.mark.slow
def test_hostile_programs_get_the_status_of_the_limit_they_hit(hostile_run):
    results = hostile_run["results"]
    # A spinner stops at 3 s of CPU time, or at the 9 s wall-clock backstop when the machine is so
    # busy that it got less than a third of a core meanwhile.
    spun = r"exceeded the (3 s CPU-time|9 s wall-clock) limit"
    expected = {
        "allocates far more than the memory limit at once": ("killed for memory", "exceeded the 512 MiB memory limit"),
        "grows memory until it runs out": ("killed for memory", "exceeded the 512 MiB memory limit"),
        "spins forever ignoring SIGTERM and SIGXCPU": ("timed out", spun),
        "sleeps forever ignoring signals": ("timed out", "exceeded the 9 s wall-clock limit"),
        "closes its output and verdict descriptors and spins": ("timed out", spun),
        "floods its output": ("failed", "printed more than 1048576 bytes"),
        "floods its error stream": ("failed", "printed more than 1048576 bytes"),
    }
    for name, (status, detail) in expected.items():
        assert results[name].status == status and re.fullmatch(detail, results[name].detail), (name, results[name])


@pytest.mark.slow
def test_the_host_is_untouched(hostile_run):
    host_dir = hostile_run["host_dir"]
    assert sorted(p.name for p in host_dir.iterdir()) == ["canary"]
    assert (host_dir / "canary").read_text() == "untouched"
    assert not os.path.exists(os.path.join(CHECKOUT, "PWNED"))
    assert not os.path.exists("/pwned") and not os.path.exists("/usr/pwned") and not os.path.exists("/etc/pwned")
    assert not hostile_run["connected"], "a sandboxed program reached a listener on the host"


@pytest.mark.slow
def test_no_secret_and_no_more_than_the_excerpt_comes_back(hostile_run):
    for name, result in hostile_run["results"].items():
        assert hostile_run["secret"] not in result.output + result.detail, name
        assert len(result.output.encode()) <= sandbox.SandboxLimits().output_excerpt_bytes + 4, name


@pytest.mark.slow
def test_nothing_survives(hostile_run):
    assert surviving_sandbox_processes() == []


EARLY_EXITS = {
    "exit(0)": "exit(0)",
    "quit()": "quit()",
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "raise SystemExit": "raise SystemExit",
    "os._exit(0)": "import os\nos._exit(0)",
    "SIGKILL to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "os.abort()": "import os\nos.abort()",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "exec of another program": "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'pass'])",
    "prints fake results": 'print(\'passed\')\nprint(\'{"passed": true, "result": "passed"}\')\nimport os\nos._exit(0)',
    "writes 'passed' to every descriptor": (
        "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'passed')\n    except OSError:\n"
        "        pass\nos._exit(0)"
    ),
    "a forked copy finishes the program": "import os, time\nif os.fork():\n    os._exit(0)\ntime.sleep(0.2)",
    "a thread exits the process": (
        "import os, threading, time\nthreading.Thread(target=lambda: os._exit(0)).start()\ntime.sleep(5)"
    ),
}


@pytest.fixture(scope="module")
def early_exit_results():
    return dict(zip(EARLY_EXITS, run_programs(list(EARLY_EXITS.values()), timeout_s=TIMEOUT_S, workers=4), strict=True))


@pytest.mark.parametrize("name", list(EARLY_EXITS))
def test_a_program_that_leaves_before_its_end_fails(early_exit_results, name):
    result = early_exit_results[name]
    assert result.status == "failed", (result.status, result.detail)


def test_a_program_that_runs_to_its_end_passes_even_leaving_threads_and_children_behind():
    programs = [
        "print('hello')",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()",
        "import os, time\nif os.fork() == 0:\n    time.sleep(60)",
    ]
    results = run_programs(programs, timeout_s=TIMEOUT_S)
    assert [r.status for r in results] == ["passed"] * 3
    assert results[0].output == "hello\n"
    assert surviving_sandbox_processes() == []


def test_a_failing_program_reports_its_error_line_and_traceback():
    [result] = run_programs(["def f():\n    assert 1 + 1 == 3, 'arithmetic'\nf()\n"])
    assert (result.status, result.detail) == ("failed", "AssertionError: arithmetic")
    assert "assert 1 + 1 == 3" in result.output and 'File "<program>", line 3' in result.output


def test_the_sandbox_shows_only_what_python_needs():
    probe = f"""
import os, socket
assert not os.path.exists({CHECKOUT!r}) and not os.path.exists("/root") and not os.path.exists("/home")
assert set(os.listdir("/")) <= {{"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}}
assert os.listdir("/etc") == ["ld.so.cache"]
assert os.getcwd() == "/tmp" and os.listdir("/tmp") == []
assert set(os.environ) <= {{"PATH", "LANG", "HOME", "PWD"}}, os.environ
assert os.getpid() <= 3, "not a fresh PID namespace"
assert [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]] == ["lo"]
links = []
for fd in sorted(set(os.listdir("/proc/self/fd")) - {{"0", "1", "2"}}):
    try:
        links.append(os.readlink("/proc/self/fd/" + fd))
    except FileNotFoundError:  # the listing's own descriptor, closed by now
        pass
assert len(links) == 1 and links[0].startswith("pipe:"), links  # the verdict pipe; nothing of the caller's
"""
    [result] = run_programs([probe])
    assert result.passed, result.output


def test_without_bwrap_the_sandbox_refuses_and_names_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox._sandbox_problem.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap.*--unsafe-no-sandbox"):
            run_programs(["pass"])
    finally:
        sandbox._sandbox_problem.cache_clear()


def test_a_missing_sandbox_interpreter_is_named(tmp_path):
    missing = str(tmp_path / "no-python")
    with pytest.raises(SandboxUnavailable, match=f"the interpreter {missing} does not exist"):
        run_programs(["pass"], python=missing)


def test_unsafe_mode_warns_and_still_requires_a_complete_run(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap: the opt-out must not need it
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        results = run_programs(["print('ok')", "exit(0)", "import os\nos._exit(0)"], unsafe_no_sandbox=True)
    assert [r.status for r in results] == ["passed", "failed", "failed"]


@pytest.mark.parametrize("bad", [dict(timeout_s=0), dict(memory_mb=-1), dict(workers=0)])
def test_nonsense_limits_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).replace("_s", "")):
        run_programs(["pass"], **bad)


def judged(candidate: str, tests: str, entry_points=("f",), prompt: str = "", shared=()) -> JudgedProgram:
    return JudgedProgram(candidate=candidate, prompt=prompt, tests=tests, entry_points=entry_points, shared=shared)


JUDGED = {
    "in-place changes reach the test's arguments": (
        judged(
            "def f(items, table):\n    items.sort()\n    table['seen'] = True\n",
            "xs, t = [3, 1, 2], {}\nassert f(xs, t) is None\nassert xs == [1, 2, 3] and t == {'seen': True}\n",
        ),
        "passed",
    ),
    "a copy sorted instead of the argument fails a mutation test": (
        judged(
            "def f(items, table):\n    items = sorted(items)\n", "xs = [3, 1, 2]\nf(xs, {})\nassert xs == [1, 2, 3]\n"
        ),
        "failed",
    ),
    "a generator is consumed by the test as an iterator": (
        judged(
            "def f(n):\n    return (i * i for i in range(n))\n",
            "it = f(3)\nassert next(it) == 0 and list(it) == [1, 4]\nassert f(2) != [0, 1]\n",
        ),
        "passed",
    ),
    "a built-in exception arrives as itself": (
        judged(
            "def f(x):\n    raise KeyError(x)\n",
            "try:\n    f('k')\nexcept KeyError as e:\n    assert e.args == ('k',)\nelse:\n    raise AssertionError\n",
        ),
        "passed",
    ),
    "an exception of the candidate's own class arrives as an Exception": (
        judged(
            "class Oops(Exception):\n    pass\ndef f():\n    raise Oops('no')\n",
            "try:\n    f()\nexcept Exception as e:\n    assert str(e) == 'Oops: no'\n",
        ),
        "passed",
    ),
    "keyword arguments and several entry points": (
        judged(
            "def f(a, *, b=1):\n    return a - b\ndef g():\n    return 'g'\n",
            "assert f(5, b=2) == 3 and g() == 'g'\n",
            entry_points=("f", "g"),
        ),
        "passed",
    ),
    "coercions that == accepts still pass": (
        judged("def f():\n    return 1.0, True, 2\n", "assert f() == (1, 1, 2.0)\n"),
        "passed",
    ),
    "objects built by shared setup code stay in the candidate's process": (
        judged(
            "class Node:\n    def __init__(self, v, kids=()):\n        self.v, self.kids = v, list(kids)\n"
            "def f(node):\n    return node.v + sum(f(k) for k in node.kids)\n"
            "root = Node(1, [Node(2), Node(3)])\n",
            "assert f(root) == 6\n",
            shared=("root",),
        ),
        "passed",
    ),
    "objects of the candidate's own classes stay there, as handles that equal only themselves": (
        judged(
            "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
            "    def __eq__(self, other):\n        return True\n"
            "def longest(pairs):\n    return sum(p.b - p.a for p in pairs)\n",
            "pairs = [Pair(1, 4), Pair(2, 3)]\nassert longest(pairs) == 4\n"
            "assert pairs[0] != pairs[1] and pairs[0] != 1 and not pairs[0] == True\n",
            entry_points=("Pair", "longest"),
        ),
        "passed",
    ),
    "a missing entry point fails": (judged("def g():\n    pass\n", "f()\n"), "failed"),
    "deep recursion in the candidate is its own failure": (
        judged("def f(n):\n    return f(n + 1)\n", "f(0)\n"),
        "failed",
    ),
    "a candidate that never answers times out": (
        judged("def f():\n    while True:\n        pass\n", "f()\n"),
        "timed out",
    ),
    "the prompt's helpers are the test's, whatever the completion defines": (
        judged(
            "def helper():\n    return 'prompt'\ndef helper():\n    return 'forged'\ndef f():\n    return helper()\n",
            "assert helper() == 'prompt' and f() == 'forged'\n",
            prompt="def helper():\n    return 'prompt'\n",
        ),
        "passed",
    ),
}


@pytest.fixture(scope="module")
def judged_results():
    return dict(
        zip(JUDGED, judge_programs([job for job, _ in JUDGED.values()], timeout_s=TIMEOUT_S, workers=4), strict=True)
    )


@pytest.mark.parametrize("name", list(JUDGED))
def test_judged_programs_behave_as_one_program_would_on_plain_data(judged_results, name):
    result = judged_results[name]
    assert result.status == JUDGED[name][1], (result.detail, result.output)


def test_the_candidate_s_output_and_the_test_s_traceback_both_come_back():
    [result] = judge_programs([judged("print('from the candidate')\ndef f():\n    return 2\n", "assert f() == 3\n")])
    assert result.detail == "AssertionError: "
    assert result.output.startswith("from the candidate\n") and 'File "<test>", line 1' in result.output


def test_unsafe_judging_still_runs_the_candidate_and_the_tests_apart(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    jobs = [
        judged("def f():\n    return 1\n", "assert f() == 1\n"),
        judged("def f():\n    return 1\nimport builtins\nbuiltins.abs = lambda x: 0\n", "assert abs(f() - 2) < 1\n"),
    ]
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        assert [r.status for r in judge_programs(jobs, unsafe_no_sandbox=True)] == ["passed", "failed"]


def test_without_cgroups_the_sandbox_refuses_rather_than_run_with_fewer_limits(monkeypatch, tmp_path):
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(cgroup, "_tree", None)
    sandbox._sandbox_problem.cache_clear()
    try:
        with pytest.raises(
            SandboxUnavailable,
            match=f"cannot enforce its limits here: no cgroup hierarchy is mounted at {tmp_path}.*--unsafe-no-sandbox",
        ):
            judge_programs([judged("def f():\n    return 1\n", "assert f() == 1\n")])
    finally:
        sandbox._sandbox_problem.cache_clear()
