"""Where a data stage runs: one set of flags, resumable tasks, and failures that name what to rerun."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_tools.executors import (
    ExecutorError,
    ExecutorOptions,
    SlurmOptions,
    Stage,
    add_executor_arguments,
    build_executor,
    executor_options_from_args,
    incomplete_tasks,
    logging_dir_for,
    run_stages,
)
from megaphi.common.cli import entry_point
from megaphi.common.errors import InputNotFoundError
from tests.conftest import read_jsonl
from tests.data_tools.probe_steps import FailWhile, KillSelfWhile, RecordRuns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(*argv: str) -> ExecutorOptions:
    parser = argparse.ArgumentParser()
    add_executor_arguments(parser, default_tasks=4)
    return executor_options_from_args(parser.parse_args(list(argv)))


def test_flags_default_to_a_local_run_and_fill_the_slurm_options():
    assert parse() == ExecutorOptions(executor="local", tasks=4, workers=-1)
    options = parse(
        "--executor",
        "slurm",
        "--tasks",
        "64",
        "--workers",
        "8",
        "--slurm-partition",
        "cpu",
        "--slurm-time",
        "01:00:00",
        "--slurm-mem-per-cpu-gb",
        "0.5",
        "--slurm-prefix",
        "module load python",
        "--slurm-arg",
        "account=proj",
        "--slurm-arg=--qos=high",
        "--slurm-wait",
    )
    assert (options.executor, options.tasks, options.workers) == ("slurm", 64, 8)
    assert options.slurm == SlurmOptions(
        partition="cpu",
        time="01:00:00",
        mem_per_cpu_gb=0.5,
        prefix="module load python",
        sbatch_args={"account": "proj", "qos": "high"},
        wait=True,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--executor", "slurm"], "--executor slurm needs --slurm-partition (sinfo lists the partitions)"),
        (["--tasks", "0"], "--tasks 0: give at least 1 task"),
        (["--workers", "0"], "--workers 0: give a positive number, or -1 for no limit"),
        (["--slurm-arg", "account"], "--slurm-arg 'account': write KEY=VALUE, e.g. account=myproj"),
    ],
)
def test_bad_flags_end_the_command_with_one_line_naming_the_flag(argv, message, capsys):
    @entry_point
    def main(argv):
        parse(*argv)
        return 0

    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_slurm_job_asks_only_for_what_the_flags_say(tmp_path):
    """No QOS, mail or requeue of datatrove's own defaults: a cluster without a QOS named "normal" rejects
    the job, and a task that fails for a reason of its own would be requeued again and again."""
    options = ExecutorOptions(
        executor="slurm", tasks=3, slurm=SlurmOptions(partition="debug", sbatch_args={"account": "p"})
    )
    executor = build_executor([], options, tmp_path / "logs", job_name="megaphi-data-x")
    args = executor.get_sbatch_args(max_array=3)
    assert "qos" not in args and "requeue" not in args and "mail-type" not in args
    assert (args["partition"], args["array"], args["account"], args["job-name"]) == (
        "debug",
        "0-2",
        "p",
        "megaphi-data-x",
    )
    assert args["kill-on-invalid-dep"] == "yes"
    assert args["mem-per-cpu"] == "2048M", "whole megabytes: sbatch rejects 2.0G"
    # the task runs with this interpreter's environment and import path
    script = executor.get_launch_file_contents(args, "launch_pickled_pipeline x")
    assert f"source {sys.prefix}/bin/activate" in script


def _stage(tmp_path, *steps, tasks=None, name="probe", settings=None):
    return Stage(name, list(steps), logging_dir_for(tmp_path / "out", name), tasks=tasks, settings=settings)


def _runs(journal) -> list[int]:
    return sorted(int(line) for line in journal.read_text().split()) if journal.exists() else []


def test_a_rerun_runs_no_task_that_finished(tmp_path):
    journal = tmp_path / "runs.txt"
    stage = _stage(tmp_path, RecordRuns(journal))
    run_stages([stage], ExecutorOptions(tasks=3, workers=2))
    assert _runs(journal) == [0, 1, 2] and incomplete_tasks(stage.logging_dir, 3) == []
    run_stages([stage], ExecutorOptions(tasks=3, workers=2))
    assert _runs(journal) == [0, 1, 2]


def test_a_failed_task_is_named_with_its_error_and_logs_and_a_rerun_runs_only_it(tmp_path):
    journal, flag = tmp_path / "runs.txt", tmp_path / "fail"
    flag.touch()
    stage = _stage(tmp_path, FailWhile(2, flag), RecordRuns(journal))
    with pytest.raises(ExecutorError) as raised:
        run_stages([stage], ExecutorOptions(tasks=4, workers=2))
    logs = f"{stage.logging_dir}/logs"
    assert str(raised.value) == (
        f"RuntimeError: task 2 was told to fail (task 2); probe: task(s) 2 of 4 did not finish; "
        f"their logs are in {logs}; rerun the same command to run only those"
    )
    assert "task 2 was told to fail" in open(f"{logs}/task_00002.log").read()  # the traceback is in the task log
    assert _runs(journal) == [0, 1, 3], "the other tasks went on"
    flag.unlink()
    run_stages([stage], ExecutorOptions(tasks=4, workers=2))
    assert _runs(journal) == [0, 1, 2, 3]


def test_a_task_whose_process_is_killed_fails_the_stage_instead_of_hanging_it(tmp_path):
    journal, flag = tmp_path / "runs.txt", tmp_path / "kill"
    flag.touch()
    stage = _stage(tmp_path, KillSelfWhile(1, flag), RecordRuns(journal))
    with pytest.raises(
        ExecutorError,
        match=r"was killed by signal 9, e\.g\. by the kernel.s OOM killer.* \(task 1\); probe: task\(s\) 1 of 3",
    ):
        run_stages([stage], ExecutorOptions(tasks=3, workers=2))
    assert 1 in incomplete_tasks(stage.logging_dir, 3)
    flag.unlink()
    run_stages([stage], ExecutorOptions(tasks=3, workers=2))
    assert sorted(set(_runs(journal))) == [0, 1, 2] and incomplete_tasks(stage.logging_dir, 3) == []


def test_a_task_that_failed_on_its_input_raises_that_error_with_the_task_and_logs_appended(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    stage = _stage(tmp_path, FailWhile(1, flag, user_error=True))
    with pytest.raises(InputNotFoundError) as raised:
        run_stages([stage], ExecutorOptions(tasks=2, workers=2))
    assert str(raised.value) == (
        f"{flag}: task 1 found a bad input (task 1); probe: task(s) 1 of 2 did not finish; their logs are in "
        f"{stage.logging_dir}/logs; rerun the same command to run only those"
    )


def test_a_failed_stage_stops_the_stages_after_it(tmp_path):
    flag, journal = tmp_path / "fail", tmp_path / "runs.txt"
    flag.touch()
    first = _stage(tmp_path, FailWhile(0, flag), name="first")
    second = _stage(tmp_path, RecordRuns(journal), name="second")
    with pytest.raises(ExecutorError, match="first: task"):
        run_stages([first, second], ExecutorOptions(tasks=1))
    assert not journal.exists()
    flag.unlink()
    run_stages([first, second], ExecutorOptions(tasks=1))
    assert _runs(journal) == [0]


def test_a_one_task_stage_runs_once_whatever_the_task_count(tmp_path):
    journal = tmp_path / "runs.txt"
    run_stages([_stage(tmp_path, RecordRuns(journal), tasks=1)], ExecutorOptions(tasks=5))
    assert _runs(journal) == [0]


def test_a_rerun_with_another_task_count_or_other_settings_is_refused(tmp_path):
    journal = tmp_path / "runs.txt"
    run_stages([_stage(tmp_path, RecordRuns(journal), settings={"journal": str(journal)})], ExecutorOptions(tasks=2))
    logging_dir = logging_dir_for(tmp_path / "out", "probe")
    with pytest.raises(ExecutorError, match=f"{logging_dir} holds a run of stage probe with another task count"):
        run_stages(
            [_stage(tmp_path, RecordRuns(journal), settings={"journal": str(journal)})], ExecutorOptions(tasks=3)
        )
    elsewhere = tmp_path / "elsewhere.txt"
    with pytest.raises(ExecutorError, match="with another settings or inputs; rerun it as it was"):
        run_stages(
            [_stage(tmp_path, RecordRuns(elsewhere), settings={"journal": str(elsewhere)})], ExecutorOptions(tasks=2)
        )
    assert _runs(journal) == [0, 1] and not elsewhere.exists()


def test_after_a_try_where_no_task_finished_a_rerun_may_change_its_settings(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    with pytest.raises(ExecutorError):
        run_stages([_stage(tmp_path, FailWhile(0, flag))], ExecutorOptions(tasks=1))
    journal = tmp_path / "runs.txt"
    run_stages([_stage(tmp_path, RecordRuns(journal))], ExecutorOptions(tasks=1))
    assert _runs(journal) == [0]


KILLABLE = """
import sys
from data_tools.executors import ExecutorOptions, Stage, logging_dir_for, run_stages
from data_tools.steps import RecordReader, RecordWriter
from tests.data_tools.probe_steps import HangWhile, RecordRuns

inputs, out, flag, started, journal = sys.argv[1:]
stage = Stage(
    "copy",
    [RecordReader([inputs]), RecordRuns(journal), HangWhile(1, flag, started), RecordWriter(out)],
    logging_dir=logging_dir_for(out, "copy"),
)
run_stages([stage], ExecutorOptions(tasks=3, workers=1))
"""


def test_a_killed_run_leaves_no_shard_of_its_unfinished_task_and_a_rerun_finishes_only_that(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in range(3):
        (inputs / f"{f}.jsonl").write_text(json.dumps({"id": str(f), "text": f"t{f}\n"}) + "\n")
    out, flag, started, journal = tmp_path / "out", tmp_path / "hang", tmp_path / "started", tmp_path / "runs.txt"
    flag.touch()
    argv = [str(inputs), str(out), str(flag), str(started), str(journal)]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, *argv], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "task 1 never started"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in tmp_path.glob("out-*.jsonl")) == ["out-00000-00000.jsonl"]
    assert len(list(tmp_path.glob(".out-00001-00000.jsonl.*.tmp"))) == 1, "task 1's half-written shard, hidden"
    assert incomplete_tasks(logging_dir_for(out, "copy"), 3) == [1, 2]
    flag.unlink()
    subprocess.run([sys.executable, "-c", KILLABLE, *argv], env=env, check=True, timeout=120)
    assert _runs(journal) == [0, 1, 1, 2]
    assert not list(tmp_path.glob(".out-*")), "the rerun of task 1 removed what its killed try left"
    assert sorted(r["id"] for r in read_jsonl(*sorted(tmp_path.glob("out-*.jsonl")))) == ["0", "1", "2"]


def test_a_local_stage_prints_one_line_and_keeps_datatroves_log_in_its_logging_dir(tmp_path, capfd, caplog):
    caplog.set_level("INFO", logger="data_tools.executors")
    stage = _stage(tmp_path, RecordRuns(tmp_path / "runs.txt"))
    run_stages([stage], ExecutorOptions(tasks=2, workers=2))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("probe: 2 task(s) done in ") and line.endswith(f"s; logs in {stage.logging_dir}")
    assert "Processing done for rank=1" in open(f"{stage.logging_dir}/logs/task_00001.log").read()
