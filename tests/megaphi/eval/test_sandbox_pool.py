"""Jobs run by many workers at once: results keep their order, and every call of this process shares
one bound on the jobs running at once."""

import threading
from concurrent.futures import ThreadPoolExecutor

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
