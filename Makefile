# TimeSformer deployment pipeline. Every target that needs Python makes the venv first.
# `make help` lists the targets and their options (from the `## ` comments below).
SHELL := /bin/bash
PYTHON ?= python3#       the Python that makes the venv (any target)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# ---- Options: one name, one meaning, in every target that takes it (docs/ has the details). A target's `## `
# comment below lists the options it takes: NAME=<...> outside the brackets is required, [NAMES] are optional.
# An option a target does not take, or a misspelled one, is an error (exit 2) rather than silently ignored.
MODEL ?= models/weights/motion_tiny.safetensors# preset name or checkpoint (.pyth, HF folder, .safetensors)
PRECISION ?= fp32#       fp32 | fp16 | int8
BACKEND ?= auto#         auto | onnxruntime | tensorrt | openvino
ATTENTION ?= auto#       auto | onnx | decomposed | ort
OUT ?=#                  where the target writes its result (bundle or report folder, ONNX, JSON or checkpoint file); default: the target's own
ENGINE ?=#               a bundle folder, e.g. engines/motion_tiny-fp32-onnxruntime
CLIPS ?=#                evaluation clips: a videos folder | synthetic[:SEED] | clips.npz
CALIB ?=#                calibration clips, same forms as CLIPS
BATCH ?=#                the engine's batch range min:opt:max (make engine)
BATCHES ?=#              batch sizes to measure, comma-separated (make bench)
THREADS ?=#              intra-op threads (0: the backend's default)
N ?=#                    number of clips (make parity, make bench-accuracy)
MODEL_REF ?=#            FP32 reference checkpoint for parity (default: the bundle's source)
ALLOW_PARITY_FAILURE ?=# 1: publish a bundle whose parity is outside tolerance
LABELS ?=#               make engine: label file (one name per line); default: the checkpoint's, else the published list by class count
PREPROCESS ?=#           make engine: preprocessing, a preset name or a JSON file (fields of PreprocessConfig, or an HF preprocessor_config.json)
RANDOM_WEIGHTS ?=#       make engine: 1 builds a preset (no weights) from random weights, marked as such everywhere
ALLOW_PRECISION_FALLBACK ?=# make engine: 1 publishes a CPU fp16 bundle on a CPU without FP16/BF16 arithmetic (recorded)
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
SOURCE ?=#               make bench-cameras: a video file every camera loops, decode included (synthetic-720p: made here)
SOURCE_SIZE ?=#          make deepstream: the cameras' WIDTHxHEIGHT (the model's resize and centre crop as a ROI)
TASK ?= motion#          synthetic task of make train-motion: motion (8 classes) | motion16 (16: slow/fast, harder)

# ---- Checking the command line (at parse time, so `make -n` checks too).
OPTION_NAMES := $(shell sed -nE 's/^([A-Z_]+) \?=.*/\1/p' $(firstword $(MAKEFILE_LIST)))
#: options every target takes (PYTHON makes the venv)
GLOBAL_OPTIONS := PYTHON
#: variables make itself reads from the command line; never options of ours
MAKE_VARIABLES := MAKEFLAGS MFLAGS MAKEOVERRIDES MAKEFILES MAKELEVEL SHELL .SHELLFLAGS
#: the command line's NAME=value variables (environment variables are not among them)
COMMAND_LINE_VARIABLES := $(filter-out $(MAKE_VARIABLES),$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
GOALS := $(or $(MAKECMDGOALS),help)
# $(call target_doc,TARGET): the `## ` comment of TARGET
target_doc = $(shell sed -nE 's/^$(1):.*## (.*)/\1/p' $(firstword $(MAKEFILE_LIST)))
# $(call required_options,TARGET): the NAME=<...> options outside the brackets of TARGET's comment
required_options = $(filter $(OPTION_NAMES),$(shell sed -nE 's/^$(1):.*## (.*)/\1/p' $(firstword $(MAKEFILE_LIST)) | sed -E 's/\[[^]]*\]//g' | grep -oE '[A-Z_]+=' | tr -d =))
# $(call target_options,TARGET): every option TARGET takes (required and [optional])
target_options = $(filter $(OPTION_NAMES),$(subst =, ,$(subst ], ,$(subst [, ,$(call target_doc,$(1))))))
# $(call closest,NAME,CANDIDATES): the candidate nearest to NAME by spelling, or nothing
closest = $(shell $(PYTHON) -c 'import difflib, sys; m = difflib.get_close_matches(sys.argv[1].upper(), sys.argv[2:], 1, 0.6); print(m[0] if m else "")' $(call q,$(1)) $(2) 2>/dev/null)
did_you_mean = $(if $(1), (did you mean $(1)?))

# $(call q,VALUE): VALUE as one shell word (single-quoted), so paths with spaces, quotes or `;` stay one argument
q = '$(subst ','\'',$(1))'
#: options with a default: given empty on the command line they would drop their flag's value
DEFAULTED_OPTIONS := $(shell sed -nE 's/^([A-Z_]+) \?= *[^# ].*/\1/p' $(firstword $(MAKEFILE_LIST)))

ifneq ($(COMMAND_LINE_VARIABLES),)
_empty := $(firstword $(foreach v,$(filter $(DEFAULTED_OPTIONS),$(COMMAND_LINE_VARIABLES)),$(if $(strip $($(v))),,$(v))))
ifneq ($(_empty),)
$(error make: $(_empty) is empty; leave it out for its default ($(strip $(shell sed -nE 's/^$(_empty) \?= *([^#]*)#.*/\1/p' $(firstword $(MAKEFILE_LIST))))))
endif
_unknown := $(firstword $(filter-out $(OPTION_NAMES) $(GLOBAL_OPTIONS),$(COMMAND_LINE_VARIABLES)))
ifneq ($(_unknown),)
$(error make: unknown option $(_unknown)$(call did_you_mean,$(call closest,$(_unknown),$(OPTION_NAMES) $(GLOBAL_OPTIONS))); `make help` lists the options)
endif
_taken := $(sort $(GLOBAL_OPTIONS) $(foreach g,$(GOALS),$(call target_options,$(g))))
# a goal without a `## ` comment (a file, a misspelled target) is left to make itself
_undocumented := $(strip $(foreach g,$(GOALS),$(if $(call target_doc,$(g)),,$(g))))
_untaken := $(if $(_undocumented),,$(firstword $(filter-out $(_taken),$(COMMAND_LINE_VARIABLES))))
ifneq ($(_untaken),)
$(error make $(GOALS): $(_untaken) is not an option of $(GOALS)$(call did_you_mean,$(call closest,$(_untaken),$(_taken))); it takes: $(or $(filter-out $(GLOBAL_OPTIONS),$(_taken)),no options))
endif
endif
# Required options (the guard, written once): `make bench` without ENGINE stops here, before the venv is made.
$(foreach g,$(GOALS),$(foreach o,$(call required_options,$(g)),$(if $($(o)),,$(error make $(g): set $(o)=<...> ($(strip $(shell sed -nE 's/^$(o) \?=[^#]*# *(.*)/\1/p' $(firstword $(MAKEFILE_LIST))))); `make help` lists the options))))

# $(call out_arg): the output path, passed as --out to every target that writes something
out_arg = $(if $(OUT),--out $(call q,$(OUT)))

.PHONY: help setup lint test test-fast demo onnx engine parity bench bench-onnx bench-cpu bench-precision bench-accuracy train-motion gpu-check serve load-test triton deepstream bench-cameras footage clean

help: ## this list
	@echo "Targets (options in [brackets] are optional; docs/ describes each):"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## (.*)/  make \1\t\2/' | expand -t 24
	@echo "Options:"
	@grep -hE '^[A-Z_]+ \?=.*# ' $(MAKEFILE_LIST) | sed -E 's/^([A-Z_]+) \?= *([^#]*)#[ ]*(.*)/  \1=\2\t\3/' | expand -t 24

$(STAMP): pyproject.toml runtime/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./runtime -e '.[cpu,dev]'
	@touch $(STAMP)

setup: $(STAMP) ## the virtual environment (.venv; torch==2.13.0 CPU is pinned)

test: $(STAMP) ## the whole test suite [PYTEST_ARGS]
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the tests not marked slow [PYTEST_ARGS]
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format check) and mypy over runtime/ (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: $(STAMP) ## FP32 and INT8 bundles of the motion model, run on a video: labels, parity, latency [OUT]
	$(PY) -m export.demo $(out_arg)

gpu-check: ## NVIDIA GPU: installs TensorRT by the driver CUDA major (tensorrt-cu12 or -cu13) or uses the JetPack TensorRT; engines vs ONNX Runtime, CUDA graphs, device memory; JSON report after each step (~10 min); exits 2 naming what is missing [OUT]
	$(PYTHON) export/tensorrt/gpu_env.py --venv $(VENV) --stamp $(STAMP)
	$(PY) -m export.tensorrt.gpu_check $(out_arg)

onnx: $(STAMP) ## export ONNX [MODEL ATTENTION OUT]
	$(PY) -m export.onnx.export --model $(call q,$(MODEL)) --attention $(call q,$(ATTENTION)) $(out_arg)

engine: $(STAMP) ## build an engine bundle [PRECISION MODEL BACKEND CALIB BATCH ATTENTION OUT ALLOW_PARITY_FAILURE LABELS PREPROCESS RANDOM_WEIGHTS ALLOW_PRECISION_FALLBACK]
	$(PY) -m export.bundle.build --model $(call q,$(MODEL)) --precision $(call q,$(PRECISION)) --backend $(call q,$(BACKEND)) \
		--attention $(call q,$(ATTENTION)) $(out_arg) $(if $(CALIB),--calib $(call q,$(CALIB))) $(if $(BATCH),--batch $(call q,$(BATCH))) \
		$(if $(ALLOW_PARITY_FAILURE),--allow-parity-failure) $(if $(LABELS),--labels $(call q,$(LABELS))) \
		$(if $(PREPROCESS),--preprocess $(call q,$(PREPROCESS))) $(if $(filter 1,$(RANDOM_WEIGHTS)),--random-weights) \
		$(if $(filter 1,$(ALLOW_PRECISION_FALLBACK)),--allow-precision-fallback)

# make parity / make bench on a device: the project's venv if there is one, else $(PYTHON) with the runtime installed
# (pip install ./runtime). Without torch they run python -m runtime check: the bundle against the reference stored in
# it, and its latency (runtime/check.py); with torch, parity takes a fresh PyTorch reference (on new CLIPS too).
RUN_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
has_torch = $(RUN_PY) -c 'import torch' >/dev/null 2>&1
check_out = $(if $(OUT),--out $(call q,$(OUT)/check.json))
no_torch_options = CLIPS, MODEL_REF and N take a fresh PyTorch reference: they need torch in $(RUN_PY)

parity: $(if $(wildcard $(PY)),$(STAMP)) ## a bundle against FP32 PyTorch (without torch: against its stored reference), exit 1 on failure: ENGINE=<bundle> [CLIPS MODEL_REF N OUT]
	@if $(has_torch); then set -x; \
		$(RUN_PY) -m export.bundle.parity --engine $(call q,$(ENGINE)) $(if $(CLIPS),--clips $(call q,$(CLIPS))) \
			$(if $(MODEL_REF),--model $(call q,$(MODEL_REF))) $(if $(N),--n $(call q,$(N))) $(out_arg); \
	else $(if $(CLIPS)$(MODEL_REF)$(N),echo "make parity: $(no_torch_options)" >&2; exit 2;) \
		echo "make parity: no torch in $(RUN_PY): checking "$(call q,$(ENGINE))" against the reference stored in the bundle (python -m runtime check)" >&2; \
		$(if $(OUT),mkdir -p $(call q,$(OUT)) &&) set -x && $(RUN_PY) -m runtime check $(call q,$(ENGINE)) --no-latency --no-profile $(check_out); fi

bench: $(if $(wildcard $(PY)),$(STAMP)) ## latency and throughput of a bundle (without torch: python -m runtime check): ENGINE=<bundle> [BATCHES THREADS OUT]
	@if $(has_torch); then set -x; \
		$(RUN_PY) -m export.bench.engine --engine $(call q,$(ENGINE)) $(if $(BATCHES),--batch $(call q,$(BATCHES))) \
			$(if $(THREADS),--threads $(call q,$(THREADS))) $(out_arg); \
	else echo "make bench: no torch in $(RUN_PY): timing "$(call q,$(ENGINE))" with python -m runtime check (parity against its stored reference, latency, per-layer profile)" >&2; \
		$(if $(OUT),mkdir -p $(call q,$(OUT)) &&) set -x && $(RUN_PY) -m runtime check $(call q,$(ENGINE)) $(if $(BATCHES),--batch $(call q,$(BATCHES))) \
			$(if $(THREADS),--threads $(call q,$(THREADS))) $(check_out); fi

bench-cameras: $(STAMP) ## many cameras through the batching hub: ENGINE=<bundle> [CAMERAS FPS SECONDS THREADS SOURCE OUT]
	$(PY) -m export.bench.cameras --engine $(call q,$(ENGINE)) --cameras $(call q,$(CAMERAS)) --fps $(call q,$(FPS)) --seconds $(call q,$(SECONDS)) \
		$(if $(THREADS),--threads $(call q,$(THREADS))) $(if $(SOURCE),--source $(call q,$(SOURCE))) $(out_arg)

bench-onnx: $(STAMP) ## our ONNX (each attention form) vs the plain transformers export, ONNX Runtime CPU (~10 min) [OUT]
	$(PY) -m export.bench.onnx_forms $(out_arg)

bench-cpu: $(STAMP) ## every CPU backend and precision vs PyTorch and transformers, GEMM peak, accuracy on synthetic clips, footage and noise (MODEL=base: ~15 min) [MODEL CALIB THREADS OUT]
	$(PY) -m export.bench.cpu --model $(call q,$(MODEL)) $(if $(THREADS),--threads $(call q,$(THREADS))) $(if $(CALIB),--calib $(call q,$(CALIB))) $(out_arg)

bench-precision: $(STAMP) ## FP32 vs INT8 (vs FP16) on ONNX Runtime CPU [MODEL OUT]
	$(PY) -m export.bench.precision --model $(call q,$(MODEL)) $(out_arg)

bench-accuracy: $(STAMP) ## accuracy of every bundle of a trained model vs FP32 PyTorch, 1600 held-out clips (MODEL=models/weights/motion16.safetensors: ~3 min) [MODEL N THREADS OUT]
	$(PY) -m export.bench.accuracy --model $(call q,$(MODEL)) $(if $(N),--n $(call q,$(N))) $(if $(THREADS),--threads $(call q,$(THREADS))) $(out_arg)

train-motion: $(STAMP) ## train a motion model (motion ~4 min, motion16 ~12 min on 2 cores) [TASK OUT]
	$(PY) -m models.train_motion --task $(call q,$(TASK)) $(out_arg)

serve: $(STAMP) ## serve a bundle on Ray Serve at 127.0.0.1 (RAY_ADDRESS: join a cluster): ENGINE=<bundle> [PORT REPLICAS BATCHING THREADS]
	$(PY) -m runtime.serving --engine $(call q,$(ENGINE)) --port $(call q,$(PORT)) --replicas $(call q,$(REPLICAS)) $(if $(filter 0,$(BATCHING)),--no-batching) \
		$(if $(THREADS),--threads $(call q,$(THREADS)))

load-test: $(STAMP) ## load a served engine, one JSON line of counts and latencies [URL CLIENTS SECONDS KILL_AFTER ENGINE OUT]
	$(PY) -m export.serving.load_test --url $(call q,$(URL)) --clients $(call q,$(CLIENTS)) --seconds $(call q,$(SECONDS)) \
		$(if $(KILL_AFTER),--kill-after $(call q,$(KILL_AFTER))) $(if $(ENGINE),--engine $(call q,$(ENGINE))) $(out_arg)

triton: $(STAMP) ## a Triton model repository for a bundle: ENGINE=<bundle> [OUT=artifacts/triton]
	$(PY) -m export.serving.triton --engine $(call q,$(ENGINE)) --out $(call q,$(or $(OUT),artifacts/triton))

deepstream: $(STAMP) ## DeepStream nvdspreprocess (sequence batching) + nvinfer configs and an NCTHW ONNX for a bundle: ENGINE=<bundle> [SOURCE_SIZE OUT=artifacts/deepstream/<bundle>]
	$(PY) -m export.serving.deepstream --engine $(call q,$(ENGINE)) $(if $(SOURCE_SIZE),--source-size $(call q,$(SOURCE_SIZE))) $(out_arg)

footage: $(STAMP) ## real camera footage for INT8 tests and benchmarks: OpenCV's sample videos (Debian opencv-doc) into artifacts/footage
	$(PY) -m calibration.clips.footage --install

clean: ## remove artifacts/ and engines/ (bundles you built) and the pytest cache
	rm -rf artifacts engines .pytest_cache
