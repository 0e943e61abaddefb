#!/usr/bin/env bash
# The whole GPU check in one call (~8 minutes on an H200): correctness, then the user's training
# path timed on real model shapes. Writes 7 small files to $OUT (the device returns at most 8,
# each under 16 MiB): gpu-check.json/.txt, train-speed-speed-8b.json, -speed-1b.json,
# train-speed.txt, gpu-report.txt and logs.tgz (every run's log). Run folders stay in /tmp.
#
#   Here, once:  scripts/gpu-wheels.sh && .venv/bin/python bench/gpu_data.py
#   Device:      bash bench/gpu.sh        carrying .whl and bench-out/gpu (about 42 MB together)
#   Smoke here:  bash bench/gpu.sh --smoke   (CPU: Triton interpreter, fp32, tiny shapes, ~1 min)
#
# 1. bench/gpu_check.py: every kernel against its reference (fp32, bf16), torch's varlen
#    FlashAttention against SDPA on packed documents, and a model loaded with transformers'
#    defaults (USE_HUB_KERNELS unset, `kernels` installed, offline) trained and evaluated on CUDA.
# 2. The training path engages every kernel: a tiny recipe with each kernel asked for in
#    Triton (a fallback is an error), run.json must say "fused" for each.
# 3. bench/train_speed.py: `python -m pipeline.train` per configuration on Llama-3.1-8B's shape
#    (seq 4096, micro-batch 1) and a ~1B shape (seq 2048, micro-batch 4), random bf16 weights
#    built on the GPU, LoRA r16 on every projection; each configuration must follow the first
#    one's loss curve (else its kernels are run one at a time to name the culprit). The 1B
#    ablations come last (they give the rows for pipeline/training/kernels/decisions.yaml) and are the
#    first to be skipped when time runs short: every run must end by 8.5 minutes in.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
RUNS=${RUNS:-/tmp/countrytune-speed-runs}
mkdir -p "$OUT" "$RUNS"
export OUT RUNS HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
unset USE_HUB_KERNELS  # transformers' default: the project must keep Hub kernels off by itself
DEADLINE=$(( $(date +%s) + 510 ))
status=0

if [[ " $* " == *" --smoke "* ]]; then
  PY=${PYTHON:-.venv/bin/python}
  export PYTHONPATH=$PWD
  nice "$PY" bench/gpu_check.py --smoke > "$OUT/gpu-check.txt" 2>&1 || status=1
  tail -1 "$OUT/gpu-check.txt"
  # the speed driver end to end on a tiny shape: loss agreement and the table
  nice "$PY" bench/train_speed.py --recipe recipes/id/tiny-cpu.yaml --label smoke --warmup 1 \
    --deadline "$DEADLINE" --bisect \
    --set "data.sources=[{path: bench-out/gpu/corpus.jsonl}]" --set training.max_steps=3 \
    --set training.log_every=1 --set training.eval_every=0 --set training.save_every=0 \
    --set data.eval_fraction=0 \
    --config "off=training.gradient_checkpointing=true" \
    --config "defaults=" \
    --config "ours=kernels={lora: true, choose: {lora: torch}}" || status=1
  exit $status
fi

PY=python3
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu.sh: installing the carried wheels failed; nothing else can run" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD COUNTRYTUNE_CACHE=/tmp/countrytune-cache
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

# 1. correctness
"$PY" bench/gpu_check.py > "$OUT/gpu-check.txt" 2>&1 || status=1
tail -1 "$OUT/gpu-check.txt"

# 2. every kernel engaged on the training path
run="$RUNS/kernel-check"
rm -rf "$run"
"$PY" -m pipeline.train recipes/id/tiny-cpu.yaml --output "$run" --no-progress \
  --set "data.sources=[{path: bench-out/gpu/corpus.jsonl}]" --set training.max_steps=4 \
  --set tracking.trackers=[] --set data.eval_fraction=0 \
  --set "kernels={rms_norm: true, rope: true, swiglu: true, fused_linear_cross_entropy: true, lora: true, implementation: triton}" \
  > "$RUNS/train-kernel-check.log" 2>&1 || status=1
"$PY" - "$run/run.json" <<'PY' 2>&1 | tee -a "$OUT/gpu-check.txt" || status=1
import json, sys
kernels = json.load(open(sys.argv[1]))["kernels"]
assert kernels and set(kernels.values()) == {"fused"}, kernels
print("train path, every kernel fused:", sorted(kernels))
PY

# 3. the user's path, timed. off and liger: issue 23's baselines (SDPA with the packed rows'
# dense mask, every layer recomputed); defaults: what a recipe that says nothing gets; ours:
# the fast settings; ours-lean: the same with every layer recomputed (the memory goal).
LIGER='kernels={rms_norm: true, rope: true, swiglu: true, fused_linear_cross_entropy: true, implementation: triton}'
OURS='kernels={rms_norm: true, rope: true, swiglu: true, fused_linear_cross_entropy: true, lora: true, implementation: triton, choose: {lora: torch}}'
BASELINE='model.attn_implementation=sdpa;training.gradient_checkpointing=true'
speed() { "$PY" bench/train_speed.py --deadline "$DEADLINE" --bisect "$@" 2>&1 | tee -a "$OUT/train-speed.txt" || status=1; }
speed --recipe bench/recipes/speed-8b.yaml \
  --config "off=$BASELINE" --config "ours=$OURS" --config "liger=$BASELINE;$LIGER" \
  --config "ours-lean=$OURS;training.gradient_checkpointing=true" --config "defaults="
speed --recipe bench/recipes/speed-1b.yaml \
  --config "off=$BASELINE" --config "ours=$OURS" --config "defaults=" \
  --config "lora-torch=kernels={lora: true, choose: {lora: torch}}" \
  --config "flce=kernels={fused_linear_cross_entropy: true, implementation: triton}" \
  --config "liger-3=kernels={rms_norm: true, rope: true, swiglu: true, implementation: triton}" \
  --config "lora-triton=kernels={lora: true, implementation: triton}"
"$PY" bench/gpu_report.py > "$OUT/gpu-report.txt" 2>&1 || status=1
cat "$OUT/gpu-report.txt"
tar -czf "$OUT/logs.tgz" -C "$RUNS" $(cd "$RUNS" && ls *.log) 2>/dev/null || true
exit $status
