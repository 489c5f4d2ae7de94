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
# The Python sources too: the strict editable install below links each file, so a new module
# needs a reinstall (an edited one is seen at once, through its link).
SOURCES := pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null) \
	$(shell find diffaccel kernels -name '*.py' 2>/dev/null)

.PHONY: install test demo bench bench-kdiffusion gpu-check bench-likelihood clean

# The package is installed with editable_mode=strict: a tree of links under build/ on sys.path,
# which imports diffaccel ahead of a namespace package found through '' (the default editable
# mode's meta-path finder, needed for the diffaccel.kernels -> kernels/ mapping, loses to the
# clone's folder when python runs from the folder that contains the clone). The check after it
# runs python from such a folder.

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q "torch>=2.4" triton numpy tqdm pytest pytest-benchmark "diffusers>=0.42,<0.43"
	$(PIP) install -q "scikit-learn>=1.3" "matplotlib>=3.7" "safetensors>=0.4"  # the rest of the demo extra
	$(PIP) install -q "accelerate>=0.26"  # tests of diffaccel.distributed under accelerate launch
	# the real k_diffusion/sampling.py for the tests, without k-diffusion's heavy dependencies
	# (clip, wandb, kornia, ... pin numpy < 2): its sampling module needs torchsde, torchdiffeq
	$(PIP) install -q --no-deps "k-diffusion==0.1.1.post1" "torchsde>=0.2.6" "torchdiffeq>=0.2.3" "trampoline>=0.1.2" scipy
	DIFFACCEL_REQUIRE_EXT=1 $(PIP) install -q --no-build-isolation --config-settings editable_mode=strict -e .
	$(PYTHON) -m diffaccel info
	tmp=$$(mktemp -d) && mkdir $$tmp/diffaccel && cd $$tmp && $(abspath $(PYTHON)) -c \
		"import diffaccel, importlib.util; diffaccel.noise; assert importlib.util.find_spec('kernels') is None" \
		&& rm -rf $$tmp
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
	$(PYTHON) benchmarks/bench_kdiffusion.py   # the samplers beside k-diffusion's (its sampling.py, stubbed package)

# On a machine with a CUDA GPU, one run (benchmarks/gpu_check.py all): build the extension for
# this GPU's architecture only, run every test that needs CUDA with compiled Triton
# (TRITON_INTERPRET=0; all of them, no -x), the GPU-only cases (a former hang under a timeout,
# the Triton step at D = 1, a CUDA-graph capture at a fresh shape, logp batch invariance,
# compute-sanitizer memcheck, two devices), a CUDA-graph capture of a 10-step sampling loop
# against eager, then time every op beside the reference and a copy of the same bytes; every
# step is timed and gpu-report.md gets every verdict and the benchmark rows. Without a GPU it
# stops at the first line with a message.
GPU_PY := $(if $(wildcard $(PYTHON)),$(PYTHON),$(PY))
gpu-check:
	@$(GPU_PY) benchmarks/gpu_check.py preflight
	$(GPU_PY) benchmarks/gpu_check.py all --report gpu-report.md

# Likelihood solvers side by side (k-diffusion's real sampling.py, loaded without its package
# __init__, so it installs without its pinned dependencies) and on a UNet trained on digits.
bench-likelihood: $(STAMP)
	$(PIP) install -q diffusers scikit-learn scipy safetensors torchdiffeq torchsde
	$(PIP) install -q --no-deps "k-diffusion==0.1.1.post1"
	PYTHONPATH=$(CURDIR)/benchmarks $(PYTHON) benchmarks/bench_likelihood.py
	PYTHONPATH=$(CURDIR)/benchmarks $(PYTHON) benchmarks/bench_likelihood_digits.py

clean:
	rm -rf build $(VENV) $(KD_VENV) diffaccel/_C*.so *.egg-info
