"""The sbatch scripts parse, ask for what the recipe needs, and train the recipe they are named for."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from megaphi.config import load_config
from megaphi.train.config import TrainConfig, plan_batches

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "slurm"
GPU_SCRIPTS = ["pretrain_8xA100.sh", "finetune_8xA100.sh", "pretrain_multinode.sh"]


def sbatch_options(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", script.read_text(), flags=re.M))


def default_config(script: Path) -> Path:
    match = re.search(r'^train "\$\{CONFIG:-([^}]+)\}"', script.read_text(), flags=re.M)
    assert match, f"{script.name} does not train a recipe through `train \"${{CONFIG:-...}}\"`"
    return REPO / match.group(1)


@pytest.mark.parametrize("name", sorted(p.name for p in SLURM.glob("*.sh")))
def test_script_is_valid_bash(name):
    proc = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", GPU_SCRIPTS)
def test_gpu_script_runs_one_task_per_gpu_and_resumes(name):
    script = SLURM / name
    options = sbatch_options(script)
    assert options["gpus-per-node"] == options["ntasks-per-node"] == "8"
    assert "exclusive" in options and "requeue" in options
    assert re.search(r'^train "\$\{CONFIG:-[^}]+\}" --resume auto "\$@"$', script.read_text(), flags=re.M)


@pytest.mark.parametrize("name, recipe, steps, lr, global_batch", [
    ("pretrain_8xA100.sh", "phi1_pretrain.yaml", 36000, 1e-3, 1024),
    ("pretrain_multinode.sh", "phi1_pretrain.yaml", 36000, 1e-3, 1024),
    ("finetune_8xA100.sh", "phi1_finetune.yaml", 6000, 1e-4, 256),
])
def test_gpu_script_trains_its_phi1_recipe_and_batches_divide(name, recipe, steps, lr, global_batch):
    script = SLURM / name
    path = default_config(script)
    assert path.name == recipe
    cfg = load_config(TrainConfig, path)
    assert (cfg.train.steps, cfg.optim.lr, cfg.train.global_batch_size, cfg.train.precision) == \
        (steps, lr, global_batch, "fp16")
    options = sbatch_options(script)
    gpus = int(options["nodes"]) * int(options["gpus-per-node"])
    # Raises ConfigError if the recipe's global batch does not split over this many GPUs.
    plan = plan_batches(cfg.train, gpus // cfg.train.tensor_parallel_size)
    assert plan.global_batch_size == global_batch
    if name.startswith("finetune"):
        assert cfg.checkpoint.init_from, "finetuning must start from the pretrained checkpoint"


def test_cpu_smoke_script_trains_the_tiny_recipe_on_two_tasks():
    script = SLURM / "smoke_cpu.sh"
    options = sbatch_options(script)
    assert options["ntasks"] == "2" and options["nodes"] == "1" and "gpus-per-node" not in options
    assert default_config(script).name == "phi_tiny_cpu.yaml"
    cfg = load_config(TrainConfig, default_config(script))
    assert cfg.model.preset == "phi-tiny" and cfg.train.precision == "fp32"
    plan_batches(cfg.train, 2)
