#!/usr/bin/env bash
# Download the wheels the lent GPU machine's image lacks into .whl/ (ignored by git), at the
# versions installed in this checkout's .venv, for its Python (3.12) and platform, so that
# bench/gpu.sh runs the same stack there as the CPU tests here. The image has torch (CUDA),
# triton, numpy, pyarrow and safetensors; no network there, so everything else travels:
#
#   scripts/gpu-wheels.sh            # then carry .whl (and bench-out/gpu) to the device
#
# Each wheel is fetched --no-deps: the list below is the closure the training path imports,
# minus what the image has (a resolver would pull a multi-GB CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PACKAGES=(
  # the project's own stack
  pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml rich
  markdown-it-py mdurl pygments psutil
  # training: the same transformers / peft / accelerate / Liger as here; transformers >= 5.24
  # depends on `kernels`, carried so the run proves Hub kernels stay off with it installed
  transformers huggingface-hub tokenizers peft accelerate liger-kernel kernels regex tqdm
  packaging filelock fsspec
  # huggingface_hub 2.x's HTTP stack (imported, never used: nothing leaves the machine)
  httpx2 httpcore2 h11 anyio sniffio idna truststore hf-xet tomlkit click
)
specs=()
for p in "${PACKAGES[@]}"; do
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null) || {
    echo "gpu-wheels: $p is not installed in $PY's environment; skipped" >&2; continue; }
  specs+=("$p==$v")
done
rm -rf .whl && mkdir .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any -d .whl "${specs[@]}"
echo "gpu-wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
