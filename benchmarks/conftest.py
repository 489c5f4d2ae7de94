"""Benchmarks are run on purpose (`make bench`), never as part of `make test`."""
import pytest
import torch


@pytest.fixture
def synced_benchmark(benchmark):
    """``synced_benchmark(fn)``: pytest-benchmark of ``fn`` that waits for the GPU each call."""
    def run(fn):
        def call():
            out = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return out
        return benchmark(call)
    return run
