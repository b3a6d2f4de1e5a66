# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
# torch/torchvision are pinned to the release this machine carries on disk (a CUDA build on x86_64).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-dev demo test test-fast clean

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

test: install-dev
	$(PY) -m pytest -q

test-fast: install-dev
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build demo-out .pytest_cache
