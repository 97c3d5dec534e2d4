#!/usr/bin/env bash
# phi-1 pretraining (paper: 36,000 steps of 1024 x 2048 tokens, under 4 days on 8 A100s) on one
# node: 8 tasks, one per GPU. Resubmitting (or a requeue) continues from the latest checkpoint.
#   sbatch slurm/pretrain_8xA100.sh [dotted.overrides ...]      e.g. run_dir=runs/phi1
#SBATCH --job-name=phi1-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --time=5-00:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
cd "${MEGAPHI_ROOT:-${SLURM_SUBMIT_DIR:-.}}"
source slurm/common.sh
train "${CONFIG:-configs/phi1_pretrain.yaml}" --resume auto "$@"
