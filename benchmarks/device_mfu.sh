#!/usr/bin/env bash
# Training throughput / MFU at phi-1's size (24 layers, hidden 2048, MLP 8192, 32 heads, vocab 51200,
# seq 2048) on one H100 or H200, in one call of at most 9 minutes: megaphi through its own trainer loop
# (python -m megaphi.train over a real .bin/.idx) against torchtitan (Llama 3 at the same FLOPs/token,
# FSDP2, compiled blocks), megatron-core (GPTModel, local layer spec, distributed optimizer, fp16) and
# transformers' PhiForCausalLM + torch.compile, then megaphi's ZeRO-1/ZeRO-2, bucket and compile variants.
#
# The GPU machine has torch, transformers and triton but no network: DeepSpeed, torchtitan, megatron-core
# and the dependencies they miss travel as wheels in ./.whl (git-ignored; never commit them), made on a
# machine with network access for the device's Python (3.12), from the project root:
#   python3 -m venv /tmp/v && /tmp/v/bin/pip install -q torch==2.13.0 wheel setuptools
#   DS_BUILD_OPS=0 /tmp/v/bin/pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     hjson pydantic pydantic-core annotated-types typing-inspection \
#     torchtitan==0.3.0 spmd_types==0.2.3 tyro docstring_parser typeguard shtab torchdata \
#     megatron-core==0.19.2 liger-kernel==0.8.5
# (DeepSpeed is built as a pure-Python wheel: its CUDA ops compile on first use on the GPU machine.
# torchtitan's other listed needs, datasets, wandb, tensorboard, ..., are not imported by its model code;
# a row whose import fails shows the missing module in its error column.) Then, on the GPU machine:
#   bash benchmarks/device_mfu.sh
# A rerun of some rows: ROWS="megaphi-trainer torchtitan" bash benchmarks/device_mfu.sh (names as in the plan).
# It starts no new row after DEADLINE_S seconds (default 500) and cuts each row to the time left, so the
# table always prints, last. The first four rows are the comparison the goal is judged on and fit in one
# call; the variants after them need a second call: ROWS="megaphi-trainer-largest ..." (about 9 minutes each).
# Checking this script on a CPU (phi-tiny, a minute or two per row):
#   PYTHON=/path/to/venv/python SMOKE=1 DEADLINE_S=3000 bash benchmarks/device_mfu.sh
# Results: $OUT/mfu.jsonl (one JSON line per row), $OUT/table.md, $OUT/mfu.log (every output line).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/megaphi-mfu}
mkdir -p "$out"
log=$out/mfu.log
: >"$out/mfu.jsonl"
deadline=${DEADLINE_S:-500}
scale=${LIMIT_SCALE:-1}  # per-row limits x this (a CPU check is slower than the GPU)
py=${PYTHON:-python3}

if [ -n "${SMOKE:-}" ]; then
  common=(--smoke --preset phi-tiny --seq-len 128 --steps 2 --warmup 1)
  export DS_ACCELERATOR=cpu
  scale=${LIMIT_SCALE:-4}
else
  common=(--preset phi-1 --seq-len 2048 --precision fp16 --steps 15 --warmup 5)
  # Install the carried wheels into /tmp/site (the image's torch stays), unless all is importable already.
  if ! "$py" -c "import deepspeed, hjson, pydantic, torchtitan, megatron.core" >/dev/null 2>&1; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "device_mfu.sh: deepspeed/torchtitan/megatron-core missing and ./.whl has no wheels; make them first" \
        "(see the top of this script)" >&2
      exit 2
    fi
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "device_mfu.sh: installing ./.whl failed" >&2; exit 2; }
  fi
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee -a "$log"
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  2>&1 | tail -1 | tee -a "$log"
for pkg in deepspeed torchtitan megatron-core liger-kernel; do
  "$py" -c "import importlib.metadata as m; print('$pkg', m.version('$pkg'))" 2>/dev/null | tee -a "$log"
done

# Micro batches: megaphi's fused loss keeps no [tokens x vocab] logits, so 16 may fit next to ZeRO-2's
# ~23 GB of states on 80 GB (12 and 8 are the fallbacks); transformers keeps fp32 logits (4 on 80 GB, 8 on
# 141 GB); Megatron's local spec materialises [heads x seq x seq] attention scores per layer (small micro).
mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
hf_mb=4; if [ "${mem_mib:-0}" -gt 120000 ]; then hf_mb=8; fi
if [ -n "${SMOKE:-}" ]; then hf_mb=2; fi
common_mb=${COMMON_MB:-8}; [ -n "${SMOKE:-}" ] && common_mb=2

# name | limit (s) | arguments; in order of importance, so a run cut short loses the least.
plan=(
  "megaphi-trainer|150|--impl megaphi-trainer --compile blocks --cross-entropy fused --micro-batch $common_mb"
  "torchtitan|120|--impl torchtitan --precision bf16 --micro-batch $common_mb,4"
  "megatron|80|--impl megatron --micro-batch 2,1"
  "hf-compile|150|--impl hf-compile --micro-batch $hf_mb"
  "megaphi-trainer-largest|150|--impl megaphi-trainer --compile blocks --cross-entropy fused --micro-batch 16,12"
  "megaphi-trainer-bf16|100|--impl megaphi-trainer --compile blocks --cross-entropy fused --precision bf16 --micro-batch $common_mb"
  "torchtitan-largest|120|--impl torchtitan --precision bf16 --micro-batch 16,12"
  "megaphi-zero1|80|--impl megaphi-compile --zero-stage 1 --cross-entropy fused --micro-batch $common_mb"
  "megaphi-zero2|80|--impl megaphi-compile --zero-stage 2 --cross-entropy fused --micro-batch $common_mb"
  "megaphi-zero2-buckets5e8|80|--impl megaphi-compile --cross-entropy fused --micro-batch $common_mb --deepspeed-set zero_optimization.reduce_bucket_size=5e8 --deepspeed-set zero_optimization.allgather_bucket_size=5e8"
  "megaphi-zero2-no-contiguous|80|--impl megaphi-compile --cross-entropy fused --micro-batch $common_mb --deepspeed-set zero_optimization.contiguous_gradients=false"
  "megaphi-trainer-eager|90|--impl megaphi-trainer --compile none --cross-entropy fused --micro-batch $common_mb"
  "megaphi-trainer-compile-model|150|--impl megaphi-trainer --compile model --cross-entropy fused --micro-batch $common_mb"
  "megaphi-liger|90|--impl megaphi-compile --cross-entropy liger --micro-batch $common_mb"
  "megaphi-unfused-ce|90|--impl megaphi-compile --cross-entropy unfused --micro-batch $common_mb"
)
selected=${ROWS:-}
for entry in "${plan[@]}"; do
  IFS='|' read -r name limit args <<<"$entry"
  if [ -n "$selected" ] && [[ " $selected " != *" $name "* ]]; then continue; fi
  left=$((deadline - SECONDS))
  if [ "$left" -lt 45 ]; then echo "== $name: skipped, ${left}s left of DEADLINE_S=$deadline" | tee -a "$log"; continue; fi
  limit=$((limit * scale))
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, at ${SECONDS}s)" | tee -a "$log"
  # shellcheck disable=SC2086
  timeout -k 10 "$limit" "$py" benchmarks/train_throughput.py "${common[@]}" $args >"$out/run.txt" 2>&1
  status=$?
  cat "$out/run.txt" >>"$log"
  if grep -q '^{' "$out/run.txt"; then
    grep '^{' "$out/run.txt" | tail -1 | sed "s/^{/{\"label\": \"$name\", /" >>"$out/mfu.jsonl"
  else
    echo "{\"label\": \"$name\", \"impl\": \"$name\", \"error\": \"exit status $status (124: over ${limit}s)\"}" \
      >>"$out/mfu.jsonl"
  fi
  grep -E '^\{|Error|error' "$out/run.txt" | tail -2 | cut -c1-300
done
rm -f "$out/run.txt"
echo "== table (${SECONDS}s)"
"$py" benchmarks/train_throughput.py --summarize "$out/mfu.jsonl" | tee "$out/table.md"
