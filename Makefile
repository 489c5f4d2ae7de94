# diffaccel: `make test` and `make demo` work from a fresh clone (they create .venv and build
# the extension: C++ CPU kernels, plus the CUDA kernels where nvcc and a CUDA torch exist).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
export CUDA_HOME TORCH_CUDA_ARCH_LIST

STAMP := $(VENV)/.diffaccel-installed
SOURCES := pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q "torch>=2.4" triton numpy tqdm pytest pytest-benchmark
	DIFFACCEL_REQUIRE_EXT=1 $(PIP) install -q --no-build-isolation -e .
	$(PYTHON) -m diffaccel info
	touch $@

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

demo: $(STAMP)
	$(PYTHON) -m diffaccel demo

bench: $(STAMP)
	$(PYTHON) -m diffaccel bench
	$(PYTHON) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf build $(VENV) diffaccel/_C*.so *.egg-info
