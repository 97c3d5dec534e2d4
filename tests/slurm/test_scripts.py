"""The sbatch scripts parse, ask for what the recipe needs, and train the recipe they are named for.

What a script does is observed by running it: with ``srun`` on PATH replaced by a recorder, each
script runs as the batch step would, and the test reads which commands it started, with which
arguments and environment. The ``#SBATCH`` header is read the way sbatch reads it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from megaphi.config import load_config
from megaphi.train.config import TrainConfig, plan_batches

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "slurm"
GPU_SCRIPTS = ["pretrain_8xA100.sh", "finetune_8xA100.sh", "pretrain_multinode.sh"]

# Records each srun call: its arguments (one per line) and the environment the task would inherit.
FAKE_SRUN = """#!/usr/bin/env bash
n=$(ls "$SRUN_LOG_DIR" | grep -c '\\.args$' || true)
printf '%s\\n' "$@" > "$SRUN_LOG_DIR/$n.args"
env > "$SRUN_LOG_DIR/$n.env"
"""
# `scontrol show job ID` as Slurm answers it (the submitted script's path and arguments in Command=),
# or refused (a cluster that does not let jobs query the controller) when SUBMITTED_SCRIPT is unset.
FAKE_SCONTROL = """#!/usr/bin/env bash
[ -n "${SUBMITTED_SCRIPT:-}" ] || { echo "scontrol: error: access denied" >&2; exit 1; }
echo "JobId=$3 JobName=job"
echo "   Command=$SUBMITTED_SCRIPT run_dir=runs/x"
echo "   WorkDir=$SLURM_SUBMIT_DIR"
"""


@dataclass
class Step:
    argv: list[str]
    env: dict[str, str]


def sbatch_options(script: Path) -> dict[str, str]:
    """The ``#SBATCH`` options, as sbatch reads them: from the lines before the first command."""
    options = {}
    for line in script.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            name, _, value = line.split(maxsplit=1)[1].removeprefix("--").partition("=")
            options[name] = value
        elif line.strip() and not line.startswith("#"):
            break
    return options


def run_script(
    name: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, list[Step]]:
    """Run ``slurm/NAME`` as the batch step of a job submitted from the checkout, srun recorded."""
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "srun"
    bin_dir.mkdir(exist_ok=True)
    log_dir.mkdir(exist_ok=True)
    for tool, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CONFIG", "MEGAPHI_ROOT"))}
    job_env = {
        **base,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SRUN_LOG_DIR": str(log_dir),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_ID": "42",
        "PYTHON": sys.executable,
        "RANK": "3",
        "WORLD_SIZE": "1",
        **(env or {}),
    }
    # sbatch runs a copy of the script from its spool directory, not from the checkout
    spool = tmp_path / "spool" / name
    spool.parent.mkdir(exist_ok=True)
    spool.write_text((SLURM / name).read_text())
    proc = subprocess.run(
        ["bash", str(spool), *args], env=job_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    steps = []
    for n in range(len(list(log_dir.glob("*.args")))):
        argv = (log_dir / f"{n}.args").read_text().splitlines()
        env_lines = (log_dir / f"{n}.env").read_text().splitlines()
        steps.append(Step(argv, dict(line.split("=", 1) for line in env_lines if "=" in line)))
    return proc, steps


def trained_config(step: Step) -> Path:
    """The recipe a ``srun ... python -m megaphi.train --config X`` step trains."""
    assert step.argv[:4] == ["--kill-on-bad-exit=1", sys.executable, "-m", "megaphi.train"], step.argv
    assert step.argv[4] == "--config", step.argv
    return REPO / step.argv[5]


@pytest.mark.parametrize("name", sorted(p.name for p in SLURM.glob("*.sh")))
def test_script_is_valid_bash(name):
    proc = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", GPU_SCRIPTS)
def test_gpu_script_runs_one_task_per_gpu_and_resumes(name, tmp_path):
    options = sbatch_options(SLURM / name)
    assert options["gpus-per-node"] == options["ntasks-per-node"] == "8"
    assert "exclusive" in options and "requeue" in options
    proc, steps = run_script(name, tmp_path, "run_dir=runs/x", "optim.lr=3e-4")
    assert proc.returncode == 0, proc.stderr
    train = steps[-1]
    assert train.argv[6:] == ["--resume", "auto", "run_dir=runs/x", "optim.lr=3e-4"]
    # every task finds its own rank: none is inherited from the submitting shell
    assert "RANK" not in train.env and "WORLD_SIZE" not in train.env
    assert train.env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and train.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    if name == "pretrain_multinode.sh":  # every node reaches the rendezvous before the long job starts
        assert [s.argv[1:] for s in steps[:-1]] == [[sys.executable, "-m", "megaphi.train.launch_env", "check"]]
    else:
        assert len(steps) == 1


@pytest.mark.parametrize(
    "name, recipe, steps, lr, global_batch",
    [
        ("pretrain_8xA100.sh", "phi1_pretrain.yaml", 36000, 1e-3, 1024),
        ("pretrain_multinode.sh", "phi1_pretrain.yaml", 36000, 1e-3, 1024),
        ("finetune_8xA100.sh", "phi1_finetune.yaml", 6000, 1e-4, 256),
    ],
)
def test_gpu_script_trains_its_phi1_recipe_and_batches_divide(name, recipe, steps, lr, global_batch, tmp_path):
    proc, started = run_script(name, tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = trained_config(started[-1])
    assert path.name == recipe
    cfg = load_config(TrainConfig, path)
    assert (cfg.train.steps, cfg.optim.lr, cfg.train.global_batch_size, cfg.train.precision) == (
        steps,
        lr,
        global_batch,
        "fp16",
    )
    options = sbatch_options(SLURM / name)
    gpus = int(options["nodes"]) * int(options["gpus-per-node"])
    # Raises ConfigError if the recipe's global batch does not split over this many GPUs.
    plan = plan_batches(cfg.train, gpus // cfg.train.tensor_parallel_size)
    assert plan.global_batch_size == global_batch
    if name.startswith("finetune"):
        assert cfg.checkpoint.init_from, "finetuning must start from the pretrained checkpoint"


def test_cpu_smoke_script_trains_the_tiny_recipe_on_two_tasks(tmp_path):
    options = sbatch_options(SLURM / "smoke_cpu.sh")
    assert options["ntasks"] == "2" and options["nodes"] == "1" and "gpus-per-node" not in options
    proc, steps = run_script("smoke_cpu.sh", tmp_path, "data.paths=[data/mine]", "train.steps=2")
    assert proc.returncode == 0, proc.stderr
    (train,) = steps
    assert train.env["DS_ACCELERATOR"] == "cpu"
    assert train.argv[-2:] == ["data.paths=[data/mine]", "train.steps=2"], "the caller's overrides win"
    path = trained_config(train)
    assert path.name == "phi_tiny_cpu.yaml"
    cfg = load_config(TrainConfig, path)
    assert cfg.model.preset == "phi-tiny" and cfg.train.precision == "fp32"
    plan_batches(cfg.train, 2)


def test_config_chooses_another_recipe_and_a_missing_one_is_one_error_line(tmp_path):
    proc, steps = run_script("pretrain_8xA100.sh", tmp_path, env={"CONFIG": "configs/phi1_small_pretrain.yaml"})
    assert proc.returncode == 0, proc.stderr
    assert trained_config(steps[-1]).name == "phi1_small_pretrain.yaml"
    (tmp_path / "again").mkdir()
    proc, steps = run_script("pretrain_8xA100.sh", tmp_path / "again", env={"CONFIG": "configs/missing.yaml"})
    assert proc.returncode == 2 and steps == []
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config configs/missing.yaml not found; set CONFIG to a recipe under configs/"
    )


def test_a_job_submitted_from_outside_the_checkout_runs_in_the_checkout_of_its_script(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"SLURM_SUBMIT_DIR": str(elsewhere), "SUBMITTED_SCRIPT": str(SLURM / "pretrain_8xA100.sh")}
    proc, steps = run_script("pretrain_8xA100.sh", tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"in {REPO}" in proc.stdout
    assert trained_config(steps[-1]).name == "phi1_pretrain.yaml"


@pytest.mark.parametrize("name", sorted(p.name for p in SLURM.glob("*.sh") if p.name != "common.sh"))
def test_a_job_that_cannot_find_the_checkout_says_where_it_looked_and_what_to_do(name, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Slurm does not answer, and the job was submitted from a directory that is no checkout.
    proc, steps = run_script(name, tmp_path, env={"SLURM_SUBMIT_DIR": str(elsewhere)})
    assert proc.returncode == 2 and steps == [], proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {elsewhere} is not a megaphi checkout (no slurm/common.sh); submit from the checkout "
        "(cd /path/to/megaphi && sbatch slurm/...) or set MEGAPHI_ROOT=/path/to/megaphi"
    ]


def test_megaphi_root_when_set_is_the_checkout_even_where_another_would_be_found(tmp_path):
    wrong = tmp_path / "not-megaphi"
    wrong.mkdir()
    proc, steps = run_script("smoke_cpu.sh", tmp_path, env={"MEGAPHI_ROOT": str(wrong)})
    assert proc.returncode == 2 and steps == []
    assert proc.stderr.strip() == (
        f"error: {wrong} is not a megaphi checkout (no slurm/common.sh); submit from the checkout "
        "(cd /path/to/megaphi && sbatch slurm/...) or set MEGAPHI_ROOT=/path/to/megaphi"
    )
    (tmp_path / "again").mkdir()
    proc, steps = run_script("smoke_cpu.sh", tmp_path / "again", "data.paths=[d]", env={"MEGAPHI_ROOT": str(REPO)})
    assert proc.returncode == 0, proc.stderr
