"""Jobs run by many workers at once: results keep their order, every call of this process shares one
bound on the jobs running at once, and no more jobs run at once than the scorer's own memory holds
at every sandbox's limit (or none, with the remedy, when not even one fits); when that memory runs
out all the same, the OOM killer takes a sample, not the scorer."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from megaphi.eval import sandbox_jobs
from megaphi.eval.sandbox import run_programs
from tests.megaphi.eval.sandbox_attacks import surviving_sandbox_processes


def test_results_come_back_in_input_order_with_many_workers():
    programs = [f"import time\ntime.sleep({0.05 * (i % 3)})\nassert {i} % 2 == 0" for i in range(12)]
    results = run_programs(programs, workers=6)
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(12)]


def test_calls_from_many_threads_share_one_bound_on_jobs_at_once(monkeypatch):
    # Synthetic-data validation calls run_programs with one program from each of many threads: the
    # worker count bounds the jobs of this whole process at once, not those of each call.
    lock, running, most = threading.Lock(), [0], [0]
    judge = sandbox_jobs.ProgramSandbox.judge

    def counted(self, program):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return judge(self, program)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(sandbox_jobs.ProgramSandbox, "judge", counted)
    programs = [f"import time\ntime.sleep(1)\nassert {i} % 3 != 0" for i in range(6)]
    with ThreadPoolExecutor(len(programs)) as pool:
        results = list(pool.map(lambda program: run_programs([program], workers=2)[0], programs))
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(6)]
    assert most[0] == 2
    assert surviving_sandbox_processes() == []


# A sample whose candidate and tests both hold many small buffers, each sandbox under its own limit,
# while an honest sample beside them holds one larger buffer under its own. Two such samples at once
# would pass the memory of the scorer's own group, and the OOM killer, picking the largest process
# among equal oom_score_adj values, would take the honest one: the scorer must run only as many
# samples at once as that group holds at every sandbox's limit.
_MANY_SMALL = """
import os, time
for _ in range(6):
    if os.fork() == 0:
        hold = b"x" * (16 << 20)
        time.sleep(8)
        os._exit(0)
hold = b"x" * (16 << 20)
"""
_HOLDING = "import time\ntime.sleep(4)\n"  # the tests keep theirs while the candidate's are held too
_ONE_LARGER = "import time\ntime.sleep(2)\nhold = b'x' * (104 << 20)\ntime.sleep(1)\n"
_SCORER = """
import json, sys
from megaphi.eval.sandbox import JudgedProgram, judge_programs
jobs = [JudgedProgram(candidate=c + "\\ndef answer():\\n    return 42\\n", prompt="", tests=t + "\\nassert answer() == 42\\n",
                      entry_points=("answer",)) for c, t in json.loads(sys.argv[1])]
print(json.dumps([r.status for r in judge_programs(jobs, timeout_s=8.0, memory_mb=128, workers=2)]))
"""


_PROGRAM_RUNNER = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from megaphi.eval.sandbox import run_programs
programs = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(programs)) as pool:  # one program per call and thread, as synthetic data is validated
    results = list(pool.map(lambda p: run_programs([p], timeout_s=8.0, memory_mb=128, workers=2)[0], programs))
print(json.dumps([r.status for r in results]))
"""


def _score_in_a_memory_group(limit_mb: int, samples: list, scorer: str = _SCORER):
    """Run ``scorer`` on ``samples`` ((candidate, tests) pairs for the default one) inside a cgroup v1
    memory group of ``limit_mb`` MiB."""
    import json
    import subprocess
    import sys
    import time

    from megaphi.eval import cgroup

    tree = cgroup.cgroup_tree()
    if tree.version != 1:
        pytest.skip("the scorer's group is limited here through cgroup v1")
    group = os.path.join(tree.parents["memory"], f"megaphi-red-team-{os.getpid()}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit_mb << 20))
        command = f'echo $$ > {group}/cgroup.procs && exec "$@"'
        return subprocess.run(
            ["/bin/sh", "-c", command, "sh", sys.executable, "-c", scorer, json.dumps(samples)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=os.getcwd(),
        )
    finally:
        for _ in range(50):  # the scorer has left; its emptied group goes
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)


def test_an_honest_sample_keeps_its_verdict_when_its_neighbour_fills_the_scorer_s_group():
    import json

    # 320 MiB holds one sample's two 128 MiB sandboxes beside the scorer, not two samples'.
    done = _score_in_a_memory_group(320, [(_MANY_SMALL, _MANY_SMALL + _HOLDING), (_ONE_LARGER, "")])
    statuses = json.loads(done.stdout.strip().splitlines()[-1])
    assert statuses == ["passed", "passed"], (statuses, done.stderr[-2000:])
    assert "running 1 job(s) at once instead of the 2 requested" in done.stderr, done.stderr[-2000:]


def test_programs_run_from_many_threads_are_admitted_together_against_the_scorer_s_memory():
    import json

    # 200 MiB holds one 128 MiB sandbox beside the scorer, not two: the second call's program must
    # wait for the first one's, though each call alone would fit.
    done = _score_in_a_memory_group(
        200, [_MANY_SMALL + "import time\ntime.sleep(4)\n", _ONE_LARGER], scorer=_PROGRAM_RUNNER
    )
    statuses = json.loads(done.stdout.strip().splitlines()[-1])
    assert statuses == ["passed", "passed"], (statuses, done.stderr[-2000:])
    assert "running 1 job(s) at once instead of the 2 requested" in done.stderr, done.stderr[-2000:]


# The scorer's own memory grows while a sample holds most of its sandbox's share: its group runs out
# with the scorer as its largest process. Without CAP_SYS_RESOURCE the scorer cannot go below 0, but
# the sandboxes' 1000 still makes the OOM killer take the sample, and the run goes on.
_GROWING_SCORER = """
import json, sys, threading, time
from megaphi.eval.sandbox import JudgedProgram, judge_programs
candidate, = json.loads(sys.argv[1])
job = JudgedProgram(candidate=candidate + "\\ndef answer():\\n    return 42\\n", prompt="",
                    tests="assert answer() == 42\\n", entry_points=("answer",))
held = []
def grow():
    time.sleep(1.5)
    held.append(b"x" * (200 << 20))
threading.Thread(target=grow).start()
[result] = judge_programs([job], timeout_s=8.0, memory_mb=128, workers=1)
print(json.dumps([result.status, len(held)]))
"""


def test_the_oom_killer_takes_the_sample_not_the_scorer_when_the_scorer_is_the_largest_process():
    import json

    # 300 MiB admits one sample (two 128 MiB sandboxes); 100 MiB in the candidate and 200 MiB more in
    # the scorer do not fit in it together.
    done = _score_in_a_memory_group(300, ["hold = b'x' * (100 << 20)\nimport time\ntime.sleep(5)\n"], _GROWING_SCORER)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["killed for memory", 1]


def test_the_scorer_refuses_to_judge_when_not_even_one_sample_fits_its_memory():
    done = _score_in_a_memory_group(200, [(_ONE_LARGER, "")])
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "SandboxUnavailable" in last and "2 sandbox(es) x 128 MiB = 256 MiB" in last, done.stderr[-2000:]
    assert "lower --sandbox-memory-mb or give the scorer more memory" in last, last
