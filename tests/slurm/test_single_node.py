"""`sbatch --wait slurm/smoke_cpu.sh` as its usage line says, on a real one-node Slurm started as README says:
two tasks train on the quickstart's output, checkpoint, exit 0."""

import json
import subprocess

import pytest

from data_tools.preprocess import preprocess
from megaphi.common.net import free_port
from tests.launch.tiny_run import REPO, assert_trained
from tests.megaphi.tiny_phi import TRAINING_TEXT, make_tokenizer


def quickstart_layout(root):
    """What the quickstart leaves for the smoke job: its tokenizer and the tokens preprocess wrote with it."""
    make_tokenizer(root / "tokenizer")
    (root / "data").mkdir(parents=True)
    corpus = root / "data" / "clean-00000.jsonl"
    corpus.write_text("".join(json.dumps({"text": t * 20}) + "\n" for t in TRAINING_TEXT * 4))
    preprocess([corpus], root / "data" / "code", root / "tokenizer", append_eod=True, progress=False)
    return root


@pytest.mark.slow
def test_the_documented_smoke_line_trains_on_the_quickstarts_output(slurm_single_node, tmp_path):
    quickstart = quickstart_layout(tmp_path / "quickstart")
    # The script's usage line, with the run directory moved out of the checkout.
    # A free MASTER_PORT: the port derived from the job id (1 here) is the same in every throwaway cluster
    # that other jobs on this machine may be running at the same time.
    code, out = slurm_single_node.sbatch_wait(
        "slurm/smoke_cpu.sh",
        f"run_dir={tmp_path / 'smoke'}",
        "train.steps=4",
        env={"QUICKSTART": str(quickstart), "MASTER_PORT": str(free_port("127.0.0.1"))},
    )
    assert code == 0, out
    assert "megaphi.train: done at step 4" in out, out
    assert_trained(tmp_path / "smoke", steps=4, data_parallel_size=2, global_batch_size=16)


def test_the_smoke_job_without_the_quickstarts_output_says_what_to_run(slurm_single_node, tmp_path):
    code, out = slurm_single_node.sbatch_wait("slurm/smoke_cpu.sh", env={"QUICKSTART": str(tmp_path / "none")})
    assert code == 2, out
    assert (
        f"error: no quickstart data at {tmp_path / 'none'}/data/code_text_document.bin; run "
        "`bash launch/quickstart.sh` first"
    ) in out


def test_a_job_submitted_from_outside_the_checkout_runs_in_it_or_says_what_to_do(slurm_single_node, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The checkout's script, from another directory: it finds the checkout and gets as far as its own
    # checks (here: no quickstart output), in the checkout.
    none = tmp_path / "none"
    code, out = slurm_single_node.sbatch_wait(
        str(REPO / "slurm" / "smoke_cpu.sh"), env={"QUICKSTART": str(none)}, cwd=elsewhere
    )
    assert code == 2, out
    assert f"in {REPO}" in out and f"error: no quickstart data at {none}/data/code_text_document.bin" in out
    # A copy outside any checkout, submitted outside one: one line naming where it looked and what to do.
    copy = elsewhere / "smoke_cpu.sh"
    copy.write_text((REPO / "slurm" / "smoke_cpu.sh").read_text())
    code, out = slurm_single_node.sbatch_wait(str(copy), cwd=elsewhere)
    assert code == 2, out
    assert out.strip().splitlines()[-1] == (
        f"error: {elsewhere} is not a megaphi checkout (no slurm/common.sh); submit from the checkout "
        "(cd /path/to/megaphi && sbatch slurm/...) or set MEGAPHI_ROOT=/path/to/megaphi"
    )


def test_smoke_job_with_a_missing_recipe_fails_with_one_error_line(slurm_single_node):
    code, out = slurm_single_node.sbatch_wait("slurm/smoke_cpu.sh", env={"CONFIG": "configs/missing.yaml"})
    assert code == 2, out
    assert "error: config configs/missing.yaml not found; set CONFIG to a recipe under configs/" in out


def test_local_slurm_up_inside_eval_as_documented_lets_the_next_sbatch_run(tmp_path):
    cluster = tmp_path / "cluster"
    script = (
        f'eval "$(bash launch/local_slurm.sh up {cluster} --cpus 1)"\n'
        f'sbatch --wait --output={tmp_path}/job.out --wrap "echo ran on \\$SLURMD_NODENAME"\n'
    )
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    finally:
        subprocess.run(["bash", "launch/local_slurm.sh", "down", str(cluster)], cwd=REPO, check=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "job.out").read_text().strip() == "ran on node1"
