"""`sbatch --wait slurm/smoke_cpu.sh` on a real one-node Slurm: two tasks train, checkpoint, exit 0."""
import pytest

from tests.launch.tiny_run import assert_trained, tiny_run_overrides


@pytest.mark.slow
def test_smoke_job_trains_checkpoints_and_exits_0(slurm_single_node, tmp_path):
    code, out = slurm_single_node.sbatch_wait("slurm/smoke_cpu.sh", *tiny_run_overrides(tmp_path, steps=2))
    assert code == 0, out
    assert "megaphi.train: done at step 2" in out, out
    assert_trained(tmp_path / "run", steps=2, data_parallel_size=2)


def test_smoke_job_with_a_missing_recipe_fails_with_one_error_line(slurm_single_node):
    code, out = slurm_single_node.sbatch_wait("slurm/smoke_cpu.sh", env={"CONFIG": "configs/missing.yaml"})
    assert code == 2, out
    assert "error: config configs/missing.yaml not found; set CONFIG to a recipe under configs/" in out
