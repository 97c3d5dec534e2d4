#!/usr/bin/env bash
# The whole training path under Slurm on CPU: the phi-tiny recipe on 2 tasks (data parallel 2 over
# gloo), training, checkpointing and exiting 0. Arguments are dotted config overrides:
#   sbatch --wait slurm/smoke_cpu.sh run_dir=runs/smoke train.steps=4
#SBATCH --job-name=megaphi-smoke
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
cd "${MEGAPHI_ROOT:-${SLURM_SUBMIT_DIR:-.}}"
source slurm/common.sh
export DS_ACCELERATOR=cpu
train "${CONFIG:-configs/phi_tiny_cpu.yaml}" "$@"
