#!/usr/bin/env bash
# phi-1 pretraining on several 8-GPU nodes: srun starts one task per GPU on every node; each task
# takes its rank from SLURM_* and meets the others at the first node's NodeAddr (from
# `scontrol show node`, so node names need not resolve). No hostfile, no ssh. The global batch
# stays the recipe's; more nodes mean less gradient accumulation.
#   sbatch --nodes=4 slurm/pretrain_multinode.sh [dotted.overrides ...]
# Site network settings (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) belong in the submitting environment.
#SBATCH --job-name=phi1-pretrain-multinode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --time=3-00:00:00
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
check_rendezvous
train "${CONFIG:-configs/phi1_pretrain.yaml}" --resume auto "$@"
