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
exec python3 bench/gpu_bench.py "$@"
