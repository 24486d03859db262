# TimeSformer deployment pipeline. Every target that needs Python makes the venv first.
# `make help` lists the targets and their options (from the `## ` comments below).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# ---- Options: one name, one meaning, for every target that takes it (README.md has the details).
MODEL ?= models/weights/motion_tiny.safetensors# preset name or checkpoint (.pyth, HF folder, .safetensors)
PRECISION ?= fp32#       fp32 | fp16 | int8
BACKEND ?= auto#         auto | onnxruntime | tensorrt | openvino
ATTENTION ?= auto#       auto | onnx | decomposed | ort
OUT ?=#                  output path (bundle folder, ONNX file, report folder)
ENGINE ?=#               a bundle folder, e.g. engines/motion_tiny-fp32-onnxruntime
CLIPS ?=#                evaluation clips: a videos folder | synthetic[:SEED] | clips.npz
CALIB ?=#                calibration clips, same forms as CLIPS
BATCH ?=#                the engine's batch range min:opt:max (make engine)
BATCHES ?=#              batch sizes to measure, comma-separated (make bench)
THREADS ?=#              intra-op threads (0: the backend's default)
N ?=#                    number of clips (make parity, make bench-accuracy)
MODEL_REF ?=#            FP32 reference checkpoint for parity (default: the bundle's source)
ALLOW_PARITY_FAILURE ?=# 1: publish a bundle whose parity is outside tolerance
PYTEST_ARGS ?=#          extra pytest arguments
PORT ?= 8000#            HTTP port of make serve
REPLICAS ?= 1#           serving replicas: a count, or auto (autoscaling)
BATCHING ?= 1#           make serve: 1 batches requests up to the bundle's max batch (@serve.batch), 0 one clip per call
URL ?= http://127.0.0.1:8000# the served endpoint (make load-test)
CLIENTS ?= 8#            concurrent clients (make load-test)
SECONDS ?= 20#           how long a load runs, seconds
KILL_AFTER ?=#           make load-test: ray.kill one replica this many seconds in
CAMERAS ?= 16#           simulated cameras (make bench-cameras)
FPS ?= 25#               frames per second of each simulated camera (make bench-cameras)
TASK ?= motion#          synthetic task of make train-motion: motion (8 classes) | motion16 (16: slow/fast, harder)

.PHONY: help setup test test-fast demo onnx engine parity bench bench-onnx bench-cpu bench-precision bench-accuracy train-motion gpu-check serve load-test triton bench-cameras clean

help: ## this list
	@echo "Targets (options in [brackets]; README.md describes each):"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## (.*)/  make \1\t\2/' | expand -t 24
	@echo "Options:"
	@grep -hE '^[A-Z_]+ \?=.*# ' $(MAKEFILE_LIST) | sed -E 's/^([A-Z_]+) \?= *([^#]*)#[ ]*(.*)/  \1=\2\t\3/' | expand -t 24

$(STAMP): pyproject.toml runtime/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./runtime -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## the virtual environment (.venv; torch==2.13.0 CPU is pinned)

test: $(STAMP) ## the whole test suite [PYTEST_ARGS]
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the tests not marked slow [PYTEST_ARGS]
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP) ## FP32 and INT8 bundles of the motion model, run on a video: labels, parity, latency
	$(PY) -m export.demo

gpu-check: $(STAMP) ## NVIDIA GPU + TensorRT: TensorRT tests, FP32/FP16/INT8 engines vs ONNX Runtime, CUDA graphs, device memory; JSON report (~10 min); exits 2 naming what is missing
	$(PY) -m export.tensorrt.gpu_check $(if $(OUT),--out $(OUT))

onnx: $(STAMP) ## export ONNX [MODEL ATTENTION OUT]
	$(PY) -m export.onnx.export --model $(MODEL) $(if $(filter-out auto,$(ATTENTION)),--attention $(ATTENTION)) $(if $(OUT),--out $(OUT))

engine: $(STAMP) ## build an engine bundle [PRECISION MODEL BACKEND CALIB BATCH ATTENTION OUT ALLOW_PARITY_FAILURE]
	$(PY) -m export.bundle.build --model $(MODEL) --precision $(PRECISION) --backend $(BACKEND) \
		$(if $(OUT),--out $(OUT)) $(if $(CALIB),--calib $(CALIB)) $(if $(BATCH),--batch $(BATCH)) \
		$(if $(filter-out auto,$(ATTENTION)),--attention $(ATTENTION)) $(if $(ALLOW_PARITY_FAILURE),--allow-parity-failure)

parity: $(STAMP) ## a bundle against FP32 PyTorch, exit 1 on failure: ENGINE=<bundle> [CLIPS MODEL_REF N]
	@test -n "$(ENGINE)" || { echo "make parity: set ENGINE=<bundle directory> (e.g. engines/motion_tiny-fp32-onnxruntime)" >&2; exit 2; }
	$(PY) -m export.bundle.parity --engine $(ENGINE) $(if $(CLIPS),--clips $(CLIPS)) $(if $(MODEL_REF),--model $(MODEL_REF)) \
		$(if $(N),--n $(N))

bench: $(STAMP) ## latency and throughput of a bundle: ENGINE=<bundle> [BATCHES THREADS]
	@test -n "$(ENGINE)" || { echo "make bench: set ENGINE=<bundle directory> (e.g. engines/motion_tiny-fp32-onnxruntime)" >&2; exit 2; }
	$(PY) -m export.bench.engine --engine $(ENGINE) $(if $(BATCHES),--batch $(BATCHES)) $(if $(THREADS),--threads $(THREADS))

bench-cameras: $(STAMP) ## many cameras through the batching hub: ENGINE=<bundle> [CAMERAS FPS SECONDS THREADS]
	@test -n "$(ENGINE)" || { echo "make bench-cameras: set ENGINE=<bundle directory> (e.g. engines/motion_tiny-int8-onnxruntime)" >&2; exit 2; }
	$(PY) -m export.bench.cameras --engine $(ENGINE) --cameras $(CAMERAS) --fps $(FPS) --seconds $(SECONDS) \
		$(if $(THREADS),--threads $(THREADS))

bench-onnx: $(STAMP) ## our ONNX (each attention form) vs the plain transformers export, ONNX Runtime CPU (~10 min)
	$(PY) -m export.bench.onnx_forms

bench-cpu: $(STAMP) ## every CPU backend and precision vs PyTorch and transformers, GEMM peak (base: ~10 min) [MODEL THREADS OUT]
	$(PY) -m export.bench.cpu $(if $(filter-out models/weights/motion_tiny.safetensors,$(MODEL)),--model $(MODEL)) \
		$(if $(THREADS),--threads $(THREADS)) $(if $(OUT),--out-dir $(OUT))

bench-precision: $(STAMP) ## FP32 vs INT8 (vs FP16) on ONNX Runtime CPU [MODEL]
	$(PY) -m export.bench.precision $(if $(filter-out models/weights/motion_tiny.safetensors,$(MODEL)),--model $(MODEL))

bench-accuracy: $(STAMP) ## accuracy of every bundle of a trained model vs FP32 PyTorch, 1600 held-out clips (motion16: ~3 min) [MODEL N OUT]
	$(PY) -m export.bench.accuracy $(if $(filter-out models/weights/motion_tiny.safetensors,$(MODEL)),--model $(MODEL)) \
		$(if $(N),--n $(N)) $(if $(THREADS),--threads $(THREADS)) $(if $(OUT),--out-dir $(OUT))

train-motion: $(STAMP) ## train a motion model (motion ~4 min, motion16 ~12 min on 2 cores) [TASK OUT]
	$(PY) -m models.train_motion $(if $(filter-out motion,$(TASK)),--task $(TASK)) $(if $(OUT),--out $(OUT))

serve: $(STAMP) ## serve a bundle on Ray Serve at 127.0.0.1 (RAY_ADDRESS: join a cluster): ENGINE=<bundle> [PORT REPLICAS BATCHING]
	@test -n "$(ENGINE)" || { echo "make serve: set ENGINE=<bundle directory> (e.g. engines/motion_tiny-fp32-onnxruntime)" >&2; exit 2; }
	$(PY) -m runtime.serving --engine $(ENGINE) --port $(PORT) --replicas $(REPLICAS) $(if $(filter 0,$(BATCHING)),--no-batching)

load-test: $(STAMP) ## load a served engine, one JSON line of counts and latencies [URL CLIENTS SECONDS KILL_AFTER ENGINE]
	$(PY) -m export.serving.load_test --url $(URL) --clients $(CLIENTS) --seconds $(SECONDS) \
		$(if $(KILL_AFTER),--kill-after $(KILL_AFTER)) $(if $(ENGINE),--engine $(ENGINE))

triton: $(STAMP) ## a Triton model repository for a bundle: ENGINE=<bundle> [OUT=artifacts/triton]
	@test -n "$(ENGINE)" || { echo "make triton: set ENGINE=<bundle directory> (e.g. engines/motion_tiny-fp32-onnxruntime)" >&2; exit 2; }
	$(PY) -m export.serving.triton --engine $(ENGINE) --out $(if $(OUT),$(OUT),artifacts/triton)

clean: ## remove artifacts/ and engines/ (bundles you built) and the pytest cache
	rm -rf artifacts engines .pytest_cache
