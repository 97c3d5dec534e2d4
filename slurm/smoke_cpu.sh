#!/usr/bin/env bash
# The whole training path under Slurm on CPU: the phi-tiny recipe on 2 tasks (data parallel 2 over
# gloo), training, checkpointing and exiting 0. On a fresh clone, after `bash launch/quickstart.sh`:
#   eval "$(bash launch/local_slurm.sh up /tmp/megaphi-slurm)"    # no cluster? a local one
#   sbatch --wait slurm/smoke_cpu.sh run_dir=runs/smoke train.steps=4
# It trains on the quickstart's tokens and tokenizer (QUICKSTART=runs/quickstart by default) for a
# smoke-sized schedule (4 steps, 1 warmup step). Arguments are dotted config overrides and win over
# those defaults; with data.paths=[PREFIX] it needs no quickstart (set model.overrides.vocab_size to
# cover the data's token ids if the phi-tiny preset's 2048 does not).
#SBATCH --job-name=megaphi-smoke
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
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
export DS_ACCELERATOR=cpu
require_config "${CONFIG:-configs/phi_tiny_cpu.yaml}"

defaults=(run_dir=runs/smoke train.steps=4 optim.warmup_steps=1 checkpoint.interval=2 eval.interval=0)
case " $* " in
  *" data.paths="*) ;;  # the caller's own data
  *)
    quickstart="${QUICKSTART:-runs/quickstart}"
    if [ ! -f "$quickstart/data/code_text_document.bin" ] || [ ! -d "$quickstart/tokenizer" ]; then
      echo "error: no quickstart data at $quickstart/data/code_text_document.bin; run \`bash launch/quickstart.sh\`" \
           "first, set QUICKSTART to its --work-dir, or pass data.paths=[PREFIX]" >&2
      exit 2
    fi
    vocab="$("$PYTHON" -c 'import sys; from megaphi.tokenizer import load_tokenizer
print(load_tokenizer(sys.argv[1]).vocab_size)' "$quickstart/tokenizer")"
    defaults+=("data.paths=[$quickstart/data/code_text_document]" "data.tokenizer=$quickstart/tokenizer"
               "model.overrides.vocab_size=$vocab")
    ;;
esac
train "${CONFIG:-configs/phi_tiny_cpu.yaml}" "${defaults[@]}" "$@"
