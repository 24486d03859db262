# TimeSformer deployment pipeline. Every target that needs Python makes the venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Options (see README.md for each target's options)
MODEL ?= models/weights/motion_tiny.safetensors
PRECISION ?= fp32
BACKEND ?= auto
ATTENTION ?= auto
OUT ?=
ENGINE ?=
CLIPS ?=
CALIB ?=
BATCH ?=
PYTEST_ARGS ?=

.PHONY: help setup test test-fast demo onnx engine parity bench bench-onnx train-motion clean

help:
	@echo "make setup | test | demo | onnx | engine | parity | bench | train-motion | clean   (README.md has the options)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

engine: $(STAMP)
	$(PY) -m export.engine_build --model $(MODEL) --precision $(PRECISION) --backend $(BACKEND) \
		$(if $(OUT),--out $(OUT)) $(if $(CALIB),--calib $(CALIB)) $(if $(BATCH),--batch $(BATCH)) \
		$(if $(filter-out auto,$(ATTENTION)),--attention $(ATTENTION)) $(if $(ALLOW_PARITY_FAILURE),--allow-parity-failure)

# make onnx [MODEL=<preset|checkpoint>] [ATTENTION=auto|onnx|decomposed|ort] [OUT=<file.onnx>]
onnx: $(STAMP)
	$(PY) -m export.onnx_export --model $(MODEL) $(if $(filter-out auto,$(ATTENTION)),--attention $(ATTENTION)) $(if $(OUT),--out $(OUT))

# make bench-onnx: ours (each attention mode) vs the plain transformers export on ONNX Runtime CPU, ~10 min on 2 cores
bench-onnx: $(STAMP)
	$(PY) -m export.bench_onnx

# make train-motion [OUT=models/weights/motion_tiny.safetensors]: about 4 min on 2 cores (clips cached: 3 min)
train-motion: $(STAMP)
	$(PY) -m models.train_motion $(if $(OUT),--out $(OUT))

# make parity ENGINE=<bundle> [CLIPS=<folder|synthetic|.npz>] [MODEL_REF=<checkpoint>]: exits non-zero on failure
parity: $(STAMP)
	@test -n "$(ENGINE)" || { echo "make parity: set ENGINE=<bundle directory> (e.g. engines/motion_tiny-fp32-onnxruntime)" >&2; exit 2; }
	$(PY) -m export.parity_check --engine $(ENGINE) $(if $(CLIPS),--clips $(CLIPS)) $(if $(MODEL_REF),--model $(MODEL_REF)) \
		$(if $(N),--n $(N))

# make bench ENGINE=<bundle> [BATCH=1,2,4,8] [THREADS=n]
bench: $(STAMP)
	@test -n "$(ENGINE)" || { echo "make bench: set ENGINE=<bundle directory> (e.g. engines/motion_tiny-fp32-onnxruntime)" >&2; exit 2; }
	$(PY) -m export.bench_engine --engine $(ENGINE) $(if $(BATCH),--batch $(BATCH)) $(if $(THREADS),--threads $(THREADS))

demo: $(STAMP)
	$(PY) -m export.demo

clean:
	rm -rf artifacts engines .pytest_cache
