"""Two slurmd daemons (n1 at 127.0.0.2, n2 at 127.0.0.3) on this machine: one job across both nodes."""

import json
import re
import subprocess
import sys

import pytest

from megaphi.train.launch_env import expand_hostlist
from tests.launch.tiny_run import REPO, assert_trained, tiny_run_overrides

LAUNCH_ENV = [sys.executable, "-m", "megaphi.train.launch_env"]


def test_srun_tasks_on_two_nodes_meet_at_the_first_nodes_slurm_address(slurm_two_nodes):
    out = slurm_two_nodes.run("srun", "--nodes=2", "--ntasks-per-node=1", *LAUNCH_ENV, "show").stdout
    tasks = sorted((json.loads(line) for line in out.splitlines()), key=lambda t: t["rank"])
    assert [(t["rank"], t["world_size"], t["local_rank"], t["local_world_size"], t["host"]) for t in tasks] == [
        (0, 2, 0, 1, "n1"),
        (1, 2, 0, 1, "n2"),
    ]
    # n1's NodeAddr; resolving the name "n1" would fail and the host name would give 127.0.0.1.
    assert {t["master_addr"] for t in tasks} == {"127.0.0.2"}
    assert len({t["master_port"] for t in tasks}) == 1 and {t["launcher"] for t in tasks} == {"slurm"}


@pytest.mark.parametrize("expr", ["n[1-2]", "gpu[007-011,3],login", "r[1-2]-c[08-09]", "solo"])
def test_hostlist_expansion_agrees_with_scontrol(slurm_two_nodes, expr):
    assert expand_hostlist(expr) == slurm_two_nodes.run("scontrol", "show", "hostnames", expr).stdout.split()


def test_hostfile_lists_each_nodes_slurm_address_with_its_slots(slurm_two_nodes, tmp_path):
    hostfile = tmp_path / "hostfile"
    slurm_two_nodes.run("salloc", "--nodes=2", "--ntasks-per-node=2", *LAUNCH_ENV, "hostfile", "--out", str(hostfile))
    assert hostfile.read_text() == "127.0.0.2 slots=2\n127.0.0.3 slots=2\n"
    slurm_two_nodes.run("salloc", "--nodes=2", *LAUNCH_ENV, "hostfile", "--out", str(hostfile), "--slots", "8")
    assert hostfile.read_text() == "127.0.0.2 slots=8\n127.0.0.3 slots=8\n"


@pytest.mark.slow
def test_multinode_script_trains_one_job_across_both_nodes(slurm_two_nodes, tmp_path):
    # The 8-GPU directives of the script are overridden on the command line, as sbatch allows.
    code, out = slurm_two_nodes.sbatch_wait(
        "slurm/pretrain_multinode.sh",
        *tiny_run_overrides(tmp_path, steps=2),
        options=("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"),
        env={"CONFIG": "configs/phi_tiny_cpu.yaml"},
    )
    assert code == 0, out
    # The preflight all-reduce ran on both nodes, then the trainer finished one 2-rank job.
    assert re.search(r"rank 0/2 \(local 0/1\) on n1, rendezvous 127\.0\.0\.2:\d+ via slurm: all-reduce ok", out), out
    assert re.search(r"rank 1/2 \(local 0/1\) on n2, rendezvous 127\.0\.0\.2:\d+ via slurm: all-reduce ok", out), out
    assert "megaphi.train: done at step 2" in out, out
    assert_trained(tmp_path / "run", steps=2, data_parallel_size=2)


def test_local_slurm_refuses_a_second_cluster_in_a_running_clusters_directory(slurm_two_nodes):
    proc = subprocess.run(
        ["bash", "launch/local_slurm.sh", "up", str(slurm_two_nodes.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: a cluster is already running in {slurm_two_nodes.root}; "
        f"run: launch/local_slurm.sh down {slurm_two_nodes.root}"
    )


def test_local_slurm_rejects_a_node_without_an_address(tmp_path):
    proc = subprocess.run(
        ["bash", "launch/local_slurm.sh", "up", str(tmp_path), "n1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: node 'n1' must be NAME=ADDR, e.g. n1=127.0.0.2"
    assert not (tmp_path / "slurm.conf").exists()
