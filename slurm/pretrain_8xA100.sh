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
# Find the checkout before reading anything of it: sbatch runs a copy of this script from its spool
# directory. MEGAPHI_ROOT, else the submitted script's checkout (scontrol's Command=), else the submit dir.
if [ -z "${MEGAPHI_ROOT:-}" ]; then
  submitted="$([ -z "${SLURM_JOB_ID:-}" ] || timeout 30 scontrol show job "$SLURM_JOB_ID" 2>/dev/null |
    sed -n 's/^ *Command=\([^ ]*\).*/\1/p' || true)"
  for MEGAPHI_ROOT in "$(dirname "${submitted:-${BASH_SOURCE[0]}}")/.." "${SLURM_SUBMIT_DIR:-$PWD}"; do
    [ ! -f "$MEGAPHI_ROOT/slurm/common.sh" ] || break
  done
fi
if [ ! -f "$MEGAPHI_ROOT/slurm/common.sh" ]; then
  echo "error: $MEGAPHI_ROOT is not a megaphi checkout (no slurm/common.sh);" \
       "submit from the checkout (cd /path/to/megaphi && sbatch slurm/...) or set MEGAPHI_ROOT=/path/to/megaphi" >&2
  exit 2
fi
cd "$MEGAPHI_ROOT"
source slurm/common.sh
train "${CONFIG:-configs/phi1_pretrain.yaml}" --resume auto "$@"
