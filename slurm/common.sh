# Sourced by the sbatch scripts in this directory from the checkout's root: picks the Python, sets the
# environment every megaphi job wants, and defines the steps the scripts run. Each script finds the
# checkout first (sbatch runs a copy of it from Slurm's spool directory, away from the checkout); those
# few lines repeat in every script because nothing shared can be read before the checkout is found.

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
# GPU jobs (ignored on CPU): tensor-parallel collectives must run in issue order to overlap with
# compute (Megatron's setting), and a rank that dies must fail the job instead of hanging NCCL.
export CUDA_DEVICE_MAX_CONNECTIONS=1
# sbatch passes on the submitting shell's environment: a launcher's per-process variables left there
# would make every task believe it is rank 0 of a job of one. Each srun task finds its own.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

echo "[megaphi] job ${SLURM_JOB_ID:-none} on ${SLURM_JOB_NODELIST:-this host}:" \
     "${SLURM_NTASKS:-1} tasks, $(${PYTHON} --version 2>&1) at ${PYTHON}, in $(pwd)"

# One all-reduce over every task of the allocation: proves that all nodes reach the rendezvous
# (first node's Slurm NodeAddr) before a long job spends time loading data.
check_rendezvous() {
  srun --kill-on-bad-exit=1 "$PYTHON" -m megaphi.train.launch_env check
}

# require_config CONFIG: stop the job with one line when the recipe is missing.
require_config() {
  if [ ! -f "$1" ]; then
    echo "error: config $1 not found; set CONFIG to a recipe under configs/" >&2
    exit 2
  fi
}

# train CONFIG [dotted.overrides ...]: one srun step, one task per GPU (or CPU process); each task
# finds its rank and the rendezvous from SLURM_* (megaphi.train.launch_env).
train() {
  local config="$1"
  shift
  require_config "$config"
  srun --kill-on-bad-exit=1 "$PYTHON" -m megaphi.train --config "$config" "$@"
}
