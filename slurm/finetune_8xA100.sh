#!/usr/bin/env bash
# phi-1 finetuning on CodeExercises (paper: 6,000 steps of batch 256, about 7 hours on 8 A100s),
# starting from the pretrained checkpoint named in the recipe (checkpoint.init_from). One node,
# 8 tasks, one per GPU; resubmitting continues from the latest finetuning checkpoint.
#   sbatch slurm/finetune_8xA100.sh [checkpoint.init_from=runs/phi1-pretrain/checkpoints ...]
#SBATCH --job-name=phi1-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --time=1-00:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
# The checkout: MEGAPHI_ROOT, else the submitted script's (scontrol's Command=; sbatch runs a spooled
# copy), else the submit directory. Why these lines stand in each script: slurm/common.sh.
job_script="$([ -z "${SLURM_JOB_ID:-}" ] || timeout 30 scontrol show job "$SLURM_JOB_ID" 2>/dev/null |
  sed -n 's/^ *Command=\([^ ]*\).*/\1/p')" || true
root="${MEGAPHI_ROOT:-$(dirname "${job_script:-$0}")/..}"
[ -f "$root/slurm/common.sh" ] || root="${MEGAPHI_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
[ -f "$root/slurm/common.sh" ] || { echo "error: $root is not a megaphi checkout (no slurm/common.sh); submit from the" \
  "checkout (cd /path/to/megaphi && sbatch slurm/...) or set MEGAPHI_ROOT=/path/to/megaphi" >&2; exit 2; }
cd "$root" && source slurm/common.sh
train "${CONFIG:-configs/phi1_finetune.yaml}" --resume auto "$@"
