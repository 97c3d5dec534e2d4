"""torchrun, mpirun and the deepspeed launcher all reach the same entry points through launch_env.

Each test starts real launchers and real processes; `launch_env check` joins a gloo group and
all-reduces the ranks, the training tests run the phi-tiny recipe for two steps.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megaphi.common.net import free_port
from tests.launch.tiny_run import REPO, TINY_RECIPE, assert_trained, tiny_run_overrides

BIN = Path(sys.executable).parent


def launcher_command(launcher: str, nproc: int) -> list[str]:
    """The command prefix that starts ``nproc`` local processes of ``python -m <module>``."""
    port = str(free_port("127.0.0.1"))
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", port, "-m"]
    if launcher == "mpi":
        require_mpirun()
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(nproc), sys.executable, "-m"]
    if launcher == "deepspeed":
        # On CPU (DS_ACCELERATOR=cpu) --num_gpus is just the number of local processes.
        return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", port, "--module"]
    raise ValueError(launcher)


def require_mpirun() -> None:
    if shutil.which("mpirun") is None:
        pytest.fail("mpirun is not installed: run launch/bootstrap.sh (Debian package openmpi-bin)")


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, "DS_ACCELERATOR": "cpu"}
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_torchrun_processes_join_one_group():
    # mpirun and the deepspeed launcher are proven by the training runs below; srun by tests/slurm.
    out = run(launcher_command("torchrun", 2) + ["megaphi.train.launch_env", "check"]).stdout
    ok = re.findall(r"rank (\d)/2 \(local (\d)/2\) on \S+, rendezvous (\S+) via torchrun: all-reduce ok", out)
    assert sorted((r, local) for r, local, _ in ok) == [("0", "0"), ("1", "1")], out
    assert len({addr for _, _, addr in ok}) == 1, "both ranks must use one rendezvous"


def test_plain_python_is_a_single_process_job():
    out = run([sys.executable, "-m", "megaphi.train.launch_env", "show", "--format", "exports"]).stdout
    assert "export RANK=0\nexport WORLD_SIZE=1\n" in out and "export MASTER_ADDR=127.0.0.1" in out


def test_inconsistent_environment_is_one_error_line_and_exit_2():
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2"}
    env.pop("MASTER_ADDR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "megaphi.train.launch_env", "show"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: RANK/WORLD_SIZE are set but MASTER_ADDR is not; export MASTER_ADDR too "
        "(or start the job with torchrun, deepspeed, mpirun or srun)"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["mpi", "deepspeed"])
def test_launcher_starts_one_data_parallel_training_job(launcher, tmp_path):
    cmd = launcher_command(launcher, 2) + ["megaphi.train", "--config", str(TINY_RECIPE)]
    out = run(cmd + tiny_run_overrides(tmp_path, steps=2)).stdout
    assert_trained(tmp_path / "run", steps=2, data_parallel_size=2)
    assert len(re.findall(r"^megaphi\.train: done", out, re.M)) == 1, f"only rank 0 reports:\n{out}"


@pytest.mark.slow
def test_deepspeed_hostfile_with_openmpi_launcher_trains_across_two_nodes(tmp_path):
    # Two hostfile lines are two nodes to DeepSpeed, which hands the hostfile to mpirun; Open MPI
    # starts a daemon on the second node through its ssh agent. There is no sshd here, so the agent
    # is launch/local_ssh.sh and both "nodes" are this machine, under addresses Open MPI does not
    # fold into one node (it would for 127.0.0.1 and localhost, then reject the two slot counts).
    require_mpirun()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    launcher_args = (
        f"--allow-run-as-root --display-map --mca plm_rsh_agent {REPO / 'launch' / 'local_ssh.sh'} "
        "--mca btl_tcp_if_include lo"
    )
    cmd = [
        str(BIN / "deepspeed"),
        "--hostfile",
        str(hostfile),
        "--launcher",
        "openmpi",
        "--no_ssh_check",
        "--master_addr",
        "127.0.0.1",
        "--launcher_args",
        launcher_args,
        "--module",
        "megaphi.train",
        "--config",
        str(TINY_RECIPE),
    ]
    proc = run(cmd + tiny_run_overrides(tmp_path, steps=2))
    log = proc.stdout + proc.stderr
    assert f"cmd = mpirun -n 2 -hostfile {hostfile}" in log, log  # DeepSpeed's multi-node path
    assert re.search(r"Data for node: 127\.0\.0\.2\s+Num slots: 1", log), log  # a daemon on node 2
    assert_trained(tmp_path / "run", steps=2, data_parallel_size=2)
    assert len(re.findall(r"^megaphi\.train: done", proc.stdout, re.M)) == 1, proc.stdout
