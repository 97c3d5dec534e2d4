"""The sandbox holds hostile programs: each attack below would make its program pass if it worked."""
import os
import socket
import time

import psutil
import pytest

from megaphi.eval import sandbox
from megaphi.eval.sandbox import SandboxUnavailable, run_programs

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RUNNER_MARK = "The harness that runs one program inside the sandbox"
TIMEOUT_S = 3.0


def surviving_sandbox_processes() -> list[int]:
    """Processes still running the sandbox harness or bwrap on behalf of this test process."""
    found = [p.pid for p in psutil.process_iter(["cmdline"]) if RUNNER_MARK in " ".join(p.info["cmdline"] or [])]
    return found + [p.pid for p in psutil.Process().children(recursive=True) if p.name() == "bwrap"]


def hostile_programs(host_dir, port, secret_name):
    heartbeat = host_dir / "daemon-heartbeat"
    return {
        "writes outside /tmp": f"""
import os
written = []
for path in [{str(host_dir / 'pwned')!r}, {os.path.join(CHECKOUT, 'PWNED')!r}, "/usr/pwned", "/etc/pwned", "/pwned",
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
        "fork bomb": """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
""",
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
            "while True:\n    pass\n"),
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
        start = time.monotonic()
        results = run_programs(list(programs.values()), timeout_s=TIMEOUT_S, memory_mb=512, workers=4)
        elapsed = time.monotonic() - start
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
    return {"results": dict(zip(programs, results, strict=True)), "elapsed": elapsed, "host_dir": host_dir,
            "connected": connected, "secret": secret_value}


@pytest.mark.slow
def test_every_hostile_program_is_reported_failed(hostile_run):
    statuses = {name: (r.status, r.detail) for name, r in hostile_run["results"].items()}
    assert all(status != "passed" for status, _ in statuses.values()), statuses


@pytest.mark.slow
def test_hostile_programs_get_the_status_of_the_limit_they_hit(hostile_run):
    results = hostile_run["results"]
    expected = {
        "allocates far more than the memory limit at once": ("killed for memory", "exceeded the 512 MiB memory limit"),
        "grows memory until it runs out": ("killed for memory", "exceeded the 512 MiB memory limit"),
        "spins forever ignoring SIGTERM and SIGXCPU": ("timed out", "exceeded the 3 s wall-clock limit"),
        "sleeps forever ignoring signals": ("timed out", "exceeded the 3 s wall-clock limit"),
        "closes its output and verdict descriptors and spins": ("timed out", "exceeded the 3 s wall-clock limit"),
        "floods its output": ("failed", "printed more than 1048576 bytes"),
        "floods its error stream": ("failed", "printed more than 1048576 bytes"),
    }
    assert {name: (results[name].status, results[name].detail) for name in expected} == expected


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
def test_nothing_survives_and_the_scorer_finishes_promptly(hostile_run):
    assert surviving_sandbox_processes() == []
    # Five programs need the full timeout; four workers run them in about two timeouts of wall time.
    assert hostile_run["elapsed"] < 5 * TIMEOUT_S


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
    "prints fake results": "print('passed')\nprint('{\"passed\": true, \"result\": \"passed\"}')\nimport os\nos._exit(0)",
    "writes 'passed' to every descriptor": (
        "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'passed')\n    except OSError:\n"
        "        pass\nos._exit(0)"),
    "a forked copy finishes the program": "import os, time\nif os.fork():\n    os._exit(0)\ntime.sleep(0.2)",
    "a thread exits the process": (
        "import os, threading, time\nthreading.Thread(target=lambda: os._exit(0)).start()\ntime.sleep(5)"),
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
assert [name for _, name in socket.if_nameindex()] == ["lo"]
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


def test_results_come_back_in_input_order_with_many_workers():
    programs = [f"import time\ntime.sleep({0.05 * (i % 3)})\nassert {i} % 2 == 0" for i in range(12)]
    results = run_programs(programs, workers=6)
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(12)]


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
