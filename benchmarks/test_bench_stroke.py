"""pytest-benchmark suite for the stroke-size ops: each runnable backend beside the reference in
eager mode and under torch.compile, the plain-PyTorch version, and the bandwidth floor, in one
run (grouped per op and size, so `--benchmark-only` prints them side by side).

    .venv/bin/python -m pytest benchmarks --benchmark-only
"""
import argparse

import pytest

from diffaccel.bench import CASES, add_arguments

SIZES = [64, 128]


def _args(**kw):
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    args.reference_eager = False  # the bit-exact int64 Philox in eager PyTorch takes seconds per call
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _params():
    for op in ("stroke_noise", "stroke_blur"):
        for size in SIZES:
            rows = CASES[op](_args(), size)
            for label, fn, nbytes in rows:
                yield pytest.param(fn, nbytes, id=f"{op}-{size}-{label}",
                                   marks=pytest.mark.benchmark(group=f"{op} B=64 C=4 {size}x{size}"))


@pytest.mark.parametrize("fn,nbytes", list(_params()))
def test_bench(benchmark, fn, nbytes):
    fn()  # compile / warm up outside the timing
    benchmark.extra_info["GB/s at median"] = None
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (each fn then runs once)
        benchmark.extra_info["GB/s at median"] = nbytes / benchmark.stats.stats.median / 1e9
