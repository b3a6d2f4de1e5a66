# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
# torch/torchvision are pinned to the release this machine carries on disk (a CUDA build on x86_64).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-dev demo test test-slow test-py310 test-aarch64 test-aarch64-smoke gpu-check clean

install: $(VENV)/.installed-full

install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.installed-full: pyproject.toml | $(VENV)/bin/python
	$(PIP) $(TORCH)
	$(PIP) -e '.[full]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-full
	$(PIP) -e '.[dev]'
	touch $@

demo: install
	PATH=$(abspath $(VENV))/bin:$$PATH bash examples/demo.sh

# The suite without the tests marked slow (each over ~20 s: real kills, full exports, torchrun);
# CI runs those too, with test-slow.
test: install-dev
	$(PY) -m pytest -q -m "not slow"

test-slow: install-dev
	$(PY) -m pytest -q -m slow

# The runtime on the oldest supported Python (JetPack 6 ships 3.10): a separate venv with the runtime
# extra and pytest only, so these tests also prove nothing they import needs torch. The test files are
# the ones that neither import torch, the torch side of the package (alexnet_deploy.alexnet/.export),
# nor the torch-exported test bundle, nor run train/export; picked from the files so new ones join.
PY310 ?= $(firstword $(wildcard /root/.pyenv/versions/3.10*/bin/python3.10) python3.10)
VENV310 ?= .venv-py310
# INT8 calibration (a workstation step) needs onnxruntime.quantization's save_tensors_data, which ORT
# 1.23.2, the last release with Python 3.10 wheels, lacks: its tests fail on 3.10 and are left out.
PY310_UNSUPPORTED = tests/test_calibration_pipeline.py tests/test_calibration_qdq.py
TORCH_FREE_TESTS = $(shell grep -L -E '^\s*(import torch|from torch)|importorskip..torch|runtime_bundle|alexnet_deploy\.(alexnet|export)|"(train|export)"' tests/test_*.py)

$(VENV310)/.installed: pyproject.toml
	$(PY310) -m venv $(VENV310)
	$(VENV310)/bin/python -m pip install -q --upgrade pip
	$(VENV310)/bin/python -m pip install -q -e '.[ort]' 'pytest>=8.0'
	touch $@

test-py310: $(VENV310)/.installed
	@$(VENV310)/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 10), sys.version'
	@! $(VENV310)/bin/python -c 'import torch' 2>/dev/null || { echo "torch is installed in $(VENV310)"; exit 1; }
	$(VENV310)/bin/python -m pytest -q $(filter-out $(PY310_UNSUPPORTED),$(TORCH_FREE_TESTS))

# The torch-free runtime on aarch64 under QEMU (root; prepares ~/.cache/alexnet-deploy/aarch64 once).
test-aarch64: install
	HOST_VENV=$(abspath $(VENV)) bash tools/aarch64/run.sh

test-aarch64-smoke: install
	HOST_VENV=$(abspath $(VENV)) bash tools/aarch64/run.sh --smoke

# Every GPU path at once (the tests marked cuda, benchmarks/gpu_train.py, a 227 px CUDA epoch, export,
# bench pt-cuda and pt-cuda-graphs, TensorRT when it imports): one report in gpu-check/. Uses the venv
# when there is one, else the machine's own Python with torch (pip install --no-deps -e . first).
GPU_CHECK_OUT ?= gpu-check
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) tools/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) $(VENV310) build demo-out gpu-check .pytest_cache
