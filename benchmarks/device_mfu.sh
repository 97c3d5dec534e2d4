#!/usr/bin/env bash
# Training throughput / MFU of phi-1 (1.3B, seq 2048, fp16) on one H100 or H200, in one call:
# megaphi (DeepSpeed ZeRO-2, the trainer's engine) against transformers' PhiForCausalLM.
#
# A GPU machine without DeepSpeed gets it from wheels in ./.whl (git-ignored), built elsewhere for its
# Python: `DS_BUILD_OPS=0 pip wheel --no-deps deepspeed==0.19.8 -w .whl` plus hjson and pydantic (with
# pydantic-core, annotated-types, typing-inspection). Then, from the project root on the GPU machine:
#   bash benchmarks/device_mfu.sh
# Expected: about 8 minutes (a third of it torch.compile).
# A rerun of a part: IMPLS="megaphi hf-eager" bash benchmarks/device_mfu.sh  (names as in the list below).
# It stops starting new measurements after DEADLINE_S seconds (default 520), so the table always prints.
# Checking this script on a CPU: PYTHON=.venv/bin/python EXTRA_ARGS="--smoke --preset phi-tiny --seq-len 128
#   --precision fp32 --steps 2 --warmup 1" IMPLS="megaphi hf-eager" bash benchmarks/device_mfu.sh
# Results: $OUT/mfu.jsonl (one JSON line per measurement), $OUT/table.md, $OUT/mfu.log (every output line).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/megaphi-mfu}
mkdir -p "$out"
log=$out/mfu.log
: >"$out/mfu.jsonl"
deadline=${DEADLINE_S:-520}

py=${PYTHON:-python3}
# The image lacks DeepSpeed and two of its dependencies: install the carried wheels (unless importable already).
if ! "$py" -c "import deepspeed, hjson, pydantic" >/dev/null 2>&1; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "device_mfu.sh: deepspeed is missing and ./.whl has no wheels; build DeepSpeed's wheel (and hjson," \
      "pydantic) into ./.whl on a machine with network access (see the top of this script)" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_mfu.sh: installing ./.whl failed" >&2; exit 2; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee -a "$log"
"$py" -c "import torch, transformers, deepspeed; print('torch', torch.__version__, transformers.__version__, deepspeed.__version__)" \
  2>&1 | tail -1 | tee -a "$log"

# Micro batches that fit: megaphi phi-1 at micro 8 needs ~58 GB (ZeRO-2 states ~26 GB + ~30 GB activations);
# transformers' Phi also keeps fp32 copies of the logits, so on 80 GB it runs at micro 4 (and megaphi is
# measured at 4 too, like for like). A 141 GB H200 runs everything at 8.
mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
mb=8; mb_hf=4
if [ "${mem_mib:-0}" -gt 120000 ]; then mb_hf=8; fi

# name | per-run limit (s) | arguments; in order of importance, so a cut-off run loses the least
plan=(
  "megaphi|100|--impl megaphi --micro-batch $mb"
  "hf-deepspeed|100|--impl hf-deepspeed --micro-batch $mb_hf"
  "hf-eager|90|--impl hf-eager --micro-batch $mb_hf"
  "megaphi-mb$mb_hf|90|--impl megaphi --micro-batch $mb_hf"
  # One GPU has nothing to overlap, yet overlap_comm makes ZeRO-2 synchronise the device after each backward.
  "megaphi-no-overlap|90|--impl megaphi --micro-batch $mb --deepspeed-set zero_optimization.overlap_comm=false"
  "megaphi-compile|170|--impl megaphi-compile --micro-batch $mb"
  "hf-compile|200|--impl hf-compile --micro-batch $mb_hf"
  "megaphi-accum4|100|--impl megaphi --micro-batch $mb --grad-accum 4 --steps 8 --warmup 2"
)
selected=${IMPLS:-}
for entry in "${plan[@]}"; do
  IFS='|' read -r name limit args <<<"$entry"
  if [ -n "$selected" ] && [[ " $selected " != *" $name "* ]]; then continue; fi
  if [ "$name" = "megaphi-mb$mb" ]; then continue; fi  # same as the first row on a large GPU
  left=$((deadline - SECONDS))
  if [ "$left" -lt 40 ]; then echo "== $name: skipped, ${left}s left of DEADLINE_S=$deadline" | tee -a "$log"; continue; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, at ${SECONDS}s)" | tee -a "$log"
  # shellcheck disable=SC2086
  timeout -k 10 "$limit" "$py" benchmarks/train_throughput.py --preset phi-1 --seq-len 2048 --precision fp16 \
      $args ${EXTRA_ARGS:-} >"$out/run.txt" 2>&1
  status=$?
  cat "$out/run.txt" >>"$log"
  if grep -q '^{' "$out/run.txt"; then
    grep '^{' "$out/run.txt" | tail -1 | sed "s/^{/{\"label\": \"$name\", /" >>"$out/mfu.jsonl"
  else
    echo "{\"label\": \"$name\", \"impl\": \"$name\", \"error\": \"exit status $status (124: over ${limit}s)\"}" \
      >>"$out/mfu.jsonl"
  fi
  grep -E '^\{|Error|error' "$out/run.txt" | tail -2 | cut -c1-400
done
rm -f "$out/run.txt"
"$py" benchmarks/train_throughput.py --summarize "$out/mfu.jsonl" | tee "$out/table.md"
