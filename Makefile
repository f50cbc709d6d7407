# efficient-zoo: set-up, tests and the main job. Everything installs into .venv with plain pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
JOBS   ?= 2

.PHONY: setup test test-fast demo demo-export demo-qat lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision: these exact versions are taken from this machine's disk (no multi-GB download)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[export,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The whole suite, in parallel (one xdist group per model keeps each model built once).
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q -p no:cacheprovider --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x -k "not registry" -p no:cacheprovider

# The main job: train EfficientViT-M0 (64 px) on the bundled digits (about a minute on 2 cores, >= 95% top-1),
# check the best checkpoint with zoo validate, then export it.
demo: $(STAMP)
	rm -rf out/demo
	$(BIN)/zoo info efficientvit_m0
	$(BIN)/zoo train --recipe digits --output out/demo/train
	$(BIN)/zoo validate --checkpoint out/demo/train/best.safetensors --data digits
	$(MAKE) --no-print-directory demo-export DEMO_CKPT=out/demo/train/best.safetensors \
		DEMO_EXPORT_ARGS="--calib-data digits --fold-input-norm --dynamic-batch --imgsz 64"

# The exporter's part of the demo: DEMO_CKPT (e.g. the checkpoint trained on digits) to ONNX, CoreML, INT8 ONNX and
# .ort (+ .pte when ExecuTorch is installed), input normalization folded, every artifact checked; prints the summary.
DEMO_MODEL ?= efficientvit_m0
DEMO_CKPT ?=
DEMO_EXPORT_ARGS ?= --calib-data digits --fold-input-norm --dynamic-batch
demo-export: $(STAMP)
	$(BIN)/zoo export --model $(DEMO_MODEL) $(if $(DEMO_CKPT),--checkpoint $(DEMO_CKPT)) $(DEMO_EXPORT_ARGS) \
		--formats onnx,coreml,onnx-int8,ort$$($(BIN)/python -c "import executorch" 2>/dev/null && echo ,executorch) \
		--out out/demo/export

# After make demo: quantization-aware fine-tuning of its checkpoint (6 epochs, about a minute on 2 cores), then the
# INT8 ONNX written from the learned ranges (no calibration), judged by the same INT8 gate.
demo-qat: $(STAMP)
	test -f out/demo/train/best.safetensors || $(MAKE) --no-print-directory demo
	$(BIN)/zoo train --recipe digits_qat --pretrained out/demo/train/best.safetensors --output out/demo/qat
	$(BIN)/zoo export --model $(DEMO_MODEL) --checkpoint out/demo/qat/last.safetensors --calib-data digits \
		--fold-input-norm --dynamic-batch --formats onnx,onnx-int8 --out out/demo/qat-export

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/vs_timm.py

clean:
	rm -rf $(VENV) out .pytest_cache
