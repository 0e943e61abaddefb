#!/usr/bin/env bash
# Fused-kernel checks and 8B-shaped LoRA step timings on one GPU; writes $OUT/kernels-bench.json.
#
#   On the GPU machine (carry .whl: liger-kernel and pydantic wheels for cp312, which its image
#   lacks; everything else it has):   bash bench/gpu.sh
#   Smoke run on a CPU first (Triton interpreter, tiny model, project venv): bash bench/gpu.sh --smoke
#
# Extra arguments go to bench/gpu_bench.py (--steps, --warmup, --seq, --configs, --skip-checks).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " == *" --smoke "* ]]; then
  export PYTHONPATH=$PWD
  exec nice "${PYTHON:-.venv/bin/python}" bench/gpu_bench.py "$@"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

# The training path itself engages the kernels (the model is loaded on the CPU and moved to the
# GPU by accelerate; the kernels are chosen for the GPU): tiny recipe, every kernel on with
# implementation "triton", so any fallback is an error, and run.json must say "fused" for each.
# Needs a prep output of the sample corpus carried as bench-out/kernel-check-prep (make it here:
# countrytune prep --config recipes/id/prep-sample.yaml --output bench-out/kernel-check-prep).
# With 2+ GPUs the same runs under DDP (NCCL cannot put two ranks on one GPU).
train_check() {
  local out=/tmp/kernel-check-$1; shift
  rm -rf "$out"
  "$@" -m pipeline.train recipes/id/tiny-cpu.yaml --output "$out" --no-progress \
    --set "data.sources=[{path: bench-out/kernel-check-prep}]" --set training.max_steps=4 \
    --set tracking.trackers=[] \
    --set "kernels={rms_norm: true, rope: true, swiglu: true, fused_linear_cross_entropy: true, lora: true, implementation: triton}" \
    2> "${OUT:-/tmp}/train-kernels-$(basename "$out").log"
  python3 - "$out/run.json" <<'PY'
import json, sys
kernels = json.load(open(sys.argv[1]))["kernels"]
assert kernels and set(kernels.values()) == {"fused"}, kernels
print("train path, every kernel fused:", sorted(kernels))
PY
}
if [ -d bench-out/kernel-check-prep ]; then
  train_check 1gpu python3
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    train_check ddp python3 -m accelerate.commands.launch --multi_gpu --num_processes 2
  fi
else
  echo "bench-out/kernel-check-prep not carried: train-path kernel check skipped"
fi
exec python3 bench/gpu_bench.py "$@"
