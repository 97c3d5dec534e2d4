"""Rank and rendezvous discovery from each launcher's environment (no processes started here)."""

import pytest

from megaphi.train.launch_env import (
    LaunchEnv,
    LaunchError,
    apply_to_environ,
    discover,
    expand_counts,
    expand_hostlist,
    slurm_port,
)


def test_torchrun_environment_is_taken_as_given():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RUN_ID": "abc",
    }
    assert discover(env) == LaunchEnv(3, 8, 1, 2, "10.0.0.5", 29400, "torchrun")


def test_deepspeed_launcher_environment_reads_local_size():
    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_SIZE": "2",
        "CROSS_RANK": "0",
        "CROSS_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }
    assert discover(env) == LaunchEnv(1, 2, 1, 2, "127.0.0.1", 29500, "deepspeed")


def test_rank_variables_win_over_slurm_and_mpi():
    # torchrun started by srun (one task per node) exports RANK; Slurm's own ranks are per node then.
    env = {
        "RANK": "5",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "5",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1234",
        "SLURM_PROCID": "0",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "OMPI_COMM_WORLD_SIZE": "2",
    }
    assert discover(env).rank == 5 and discover(env).launcher == "env"


def test_rank_without_master_address_names_the_missing_variable():
    with pytest.raises(LaunchError, match="MASTER_ADDR is not"):
        discover({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"})


def test_non_integer_rank_is_one_clear_error():
    with pytest.raises(LaunchError, match=r"RANK='x' is not an integer"):
        discover({"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})


def test_rank_outside_world_is_rejected():
    with pytest.raises(LaunchError, match="rank 4 is outside world size 4"):
        discover({"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"})


def _srun_env(**extra):
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "1",
        "SLURM_PROCID": "9",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "MASTER_ADDR": "10.1.0.7",
    }
    return {**env, **extra}


def test_srun_task_gets_rank_local_rank_and_node_task_count_from_slurm():
    launch = discover(_srun_env())
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (9, 16, 1, 8)
    assert launch.launcher == "slurm" and launch.master_addr == "10.1.0.7"


def test_srun_with_its_pmi2_plugin_is_still_a_slurm_launch():
    launch = discover(_srun_env(PMI_RANK="9", PMI_SIZE="16", PMI_FD="5"))
    assert (launch.rank, launch.world_size, launch.launcher) == (9, 16, "slurm")


def test_srun_tasks_agree_on_a_port_that_differs_between_jobs_and_steps():
    port = discover(_srun_env()).master_port
    assert port == discover(_srun_env(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")).master_port
    assert port != slurm_port({"SLURM_JOB_ID": "4243", "SLURM_STEP_ID": "1"})
    assert port != slurm_port({"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "2"})
    assert 15000 <= port < 30000


def test_batch_script_outside_srun_is_a_single_process():
    # sbatch's batch step sees SLURM_PROCID=0 and the job's task count, but is one process.
    env = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n1"}
    launch = discover(env)
    assert (launch.rank, launch.world_size, launch.launcher) == (0, 1, "single")


def test_nothing_set_means_one_local_process_on_a_free_port():
    launch = discover({})
    assert (launch.rank, launch.world_size, launch.master_addr, launch.launcher) == (0, 1, "127.0.0.1", "single")


def test_apply_to_environ_exports_the_env_rendezvous_variables():
    env = _srun_env()
    launch = apply_to_environ(env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "10.1.0.7",
    }
    assert env["MASTER_PORT"] == str(launch.master_port)
    # Exported variables are read back as a plain RANK/WORLD_SIZE launch with the same values.
    assert discover(env).rank == 9 and discover(env).master_port == launch.master_port


@pytest.mark.parametrize(
    "expr, names",
    [
        ("n1", ["n1"]),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("gpu[07-09,11],login", ["gpu07", "gpu08", "gpu09", "gpu11", "login"]),
        ("a[1-2]-b[1-2]", ["a1-b1", "a1-b2", "a2-b1", "a2-b2"]),
    ],
)
def test_hostlist_expansion(expr, names):
    assert expand_hostlist(expr) == names


@pytest.mark.parametrize("expr", ["n[1-2", "n[a-b]", "n[[1]]", ""])
def test_malformed_hostlist_is_rejected(expr):
    with pytest.raises(LaunchError, match="Slurm node list"):
        expand_hostlist(expr)


def test_compressed_task_counts_expand_per_node():
    assert expand_counts("8(x2),4") == [8, 8, 4]
    with pytest.raises(LaunchError, match="tasks-per-node"):
        expand_counts("8x2")
