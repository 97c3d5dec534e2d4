"""One live job per run directory, taken over when its holder died; workers die with their launcher.

Real processes throughout: a lock holder in another process, real training runs, a real torchrun.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from megaphi.train.launch_env import host_name
from megaphi.train.metrics import read_metrics
from megaphi.train.run_lock import LOCK_FILE, Holder, RunDirLocked, RunLock
from tests.launch.tiny_run import TINY_RECIPE, tiny_run_overrides
from tests.megaphi.train.conftest import REPO, run_trainer, trainer_command, trainer_env

HOLD = (
    "import sys, time; from megaphi.train.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(600)"
)


def hold_in_another_process(directory):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], env=trainer_env(), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def wait_until(condition, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def test_a_live_holder_is_named_and_a_dead_one_is_taken_over(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(RunDirLocked) as refused:
            RunLock(tmp_path).acquire()
        assert str(refused.value).startswith(
            f"{tmp_path} is in use by a live training job: pid {holder.pid} on host {host_name()} (since "
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # the kernel dropped the dead holder's lock
    assert (lock.previous.pid, lock.previous.host) == (holder.pid, host_name())
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean exit leaves a free lock
    again = RunLock(tmp_path).acquire()
    assert again.previous is None
    again.release()


def test_only_a_holder_on_this_host_can_be_declared_dead():
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(exited.stdout)
    me = Holder.me()
    assert Holder(host_name(), dead_pid, me.process_start, "earlier").is_dead_here()
    assert not me.is_dead_here()
    # the pid is reused by a newer process: not the holder, so the holder is gone
    assert Holder(host_name(), os.getpid(), "1", "earlier").is_dead_here()
    assert not Holder("another-node", dead_pid, None, "earlier").is_dead_here()  # cannot be checked from here


def start_training(tmp_path, run_dir, overrides, nproc=1):
    args = ["--config", str(TINY_RECIPE), *overrides, f"run_dir={run_dir}"]
    log = open(tmp_path / f"{run_dir.name}-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(
        trainer_command(nproc) + args, cwd=REPO, env=trainer_env(), stdout=log, stderr=log, start_new_session=True
    )


@pytest.fixture
def endless_run(tmp_path):
    """Overrides for a run that trains until killed, on a dataset written once (rewriting it would pull the
    .bin from under a running job)."""
    return [*tiny_run_overrides(tmp_path, steps=100000), "checkpoint.interval=2", "checkpoint.keep_last=1"]


def training_started(run_dir):
    metrics = run_dir / "metrics.jsonl"
    return metrics.exists() and any(line.endswith("}") for line in metrics.read_text().splitlines())


@pytest.mark.slow
def test_a_second_job_on_a_live_run_refuses_and_a_killed_jobs_run_is_taken_over(tmp_path, endless_run):
    run_dir = tmp_path / "run"
    first = start_training(tmp_path, run_dir, endless_run)
    try:
        wait_until(lambda: (run_dir / "checkpoints" / "latest").exists(), "the first job's first checkpoint")
        second = run_trainer(["--config", str(TINY_RECIPE), *endless_run, f"run_dir={run_dir}", "--resume", "auto"])
        assert second.returncode == 2, second.stderr[-3000:]
        assert (
            second.stderr.strip()
            .splitlines()[-1]
            .startswith(
                f"error: run_dir: {run_dir} is in use by a live training job: pid {first.pid} on host {host_name()}"
            )
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    steps_done = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step"))
    third = run_trainer(
        [
            "--config",
            str(TINY_RECIPE),
            *endless_run,
            f"run_dir={run_dir}",
            f"train.steps={steps_done + 1}",
            "--resume",
            "auto",
        ]
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of {run_dir}: its holder, pid {first.pid} on host {host_name()}" in third.stdout
    assert f"resuming at step {steps_done}" in third.stdout
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["step"] == steps_done + 1


@pytest.mark.slow
def test_killing_torchrun_kills_its_training_workers(tmp_path, endless_run):
    run_dir = tmp_path / "run"
    launcher = start_training(tmp_path, run_dir, endless_run, nproc=2)
    workers = []
    try:
        wait_until(lambda: training_started(run_dir), "the workers' first step")
        workers = psutil.Process(launcher.pid).children()
        assert len(workers) == 2, workers
        launcher.send_signal(signal.SIGKILL)  # no chance to stop its workers itself
        launcher.wait()
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert alive == [], f"workers {[p.pid for p in alive]} outlived their launcher"
    finally:
        for process in [launcher, *workers]:  # whatever is left, when the test failed
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                process.kill()
