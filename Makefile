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

.PHONY: install test demo bench bench-kdiffusion clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q "torch>=2.4" triton numpy tqdm pytest pytest-benchmark "diffusers>=0.42,<0.43"
	$(PIP) install -q "scikit-learn>=1.3" "matplotlib>=3.7" "safetensors>=0.4"  # the rest of the demo extra
	DIFFACCEL_REQUIRE_EXT=1 $(PIP) install -q --no-build-isolation -e .
	$(PYTHON) -m diffaccel info
	touch $@

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

# the main job: trains nothing (weights ship in the package), writes diffaccel-report/
demo: $(STAMP)
	$(PYTHON) -m diffaccel demo --out diffaccel-report

bench: $(STAMP)
	$(PYTHON) -m diffaccel bench
	$(PYTHON) -m pytest -q benchmarks --benchmark-only

# k-diffusion's log_likelihood beside ours (docs/math.md 3.3). k-diffusion is no dependency: its
# imports pull in clip, kornia, wandb, ... and pin numpy < 2, so it gets a venv of its own with
# the same torch as $(VENV), and imports this tree's build through PYTHONPATH.
KD_VENV ?= .venv-kd
bench-kdiffusion: $(STAMP)
	test -x $(KD_VENV)/bin/python || $(PY) -m venv $(KD_VENV)
	$(KD_VENV)/bin/pip install -q "torch==$$($(PYTHON) -c 'import torch; print(torch.__version__.split("+")[0])')" \
		k-diffusion "setuptools<81" tqdm
	PYTHONPATH=$(CURDIR):$(CURDIR)/benchmarks $(KD_VENV)/bin/python benchmarks/bench_step.py --likelihood-only

clean:
	rm -rf build $(VENV) $(KD_VENV) diffaccel/_C*.so *.egg-info
