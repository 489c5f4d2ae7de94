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

.PHONY: install test demo bench bench-kdiffusion bench-likelihood clean

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

# k-diffusion's log_likelihood beside ours (MATH.md 3.3). k-diffusion is no dependency: its
# imports pull in clip, kornia, wandb, ... and pin numpy < 2, so it gets a venv of its own with
# the same torch as $(VENV), and imports this tree's build through PYTHONPATH.
KD_VENV ?= .venv-kd
bench-kdiffusion: $(STAMP)
	test -x $(KD_VENV)/bin/python || $(PY) -m venv $(KD_VENV)
	$(KD_VENV)/bin/pip install -q "torch==$$($(PYTHON) -c 'import torch; print(torch.__version__.split("+")[0])')" \
		k-diffusion "setuptools<81" tqdm
	PYTHONPATH=$(CURDIR):$(CURDIR)/benchmarks $(KD_VENV)/bin/python benchmarks/bench_step.py --likelihood-only

# Likelihood solvers side by side (k-diffusion's real sampling.py, loaded without its package
# __init__, so it installs without its pinned dependencies) and on a UNet trained on digits.
bench-likelihood: $(STAMP)
	$(PIP) install -q diffusers scikit-learn scipy torchdiffeq torchsde
	$(PIP) install -q --no-deps "k-diffusion==0.1.1.post1"
	PYTHONPATH=$(CURDIR)/benchmarks $(PYTHON) benchmarks/bench_likelihood.py
	PYTHONPATH=$(CURDIR)/benchmarks $(PYTHON) benchmarks/bench_likelihood_digits.py

clean:
	rm -rf build $(VENV) $(KD_VENV) diffaccel/_C*.so *.egg-info
