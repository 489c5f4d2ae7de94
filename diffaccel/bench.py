"""Benchmark table: every available backend beside the reference (eager and torch.compile), the
plain-PyTorch version a user would write (eager and compiled), and the bandwidth floor (a copy
of the same bytes), all in one run. ``python -m diffaccel bench --help``.

On a GPU times come from ``triton.testing.do_bench``; on the CPU from the median of repeated
wall-clock runs after warm-up. Ratios within one run mean more than absolute times.
"""
import statistics
import time

import torch
import torch.nn.functional as F

from . import reference
from .backends import BACKENDS, availability

CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def add_arguments(p):
    p.add_argument("--ops", nargs="+", default=["stroke_noise", "stroke_blur"], help=f"cases ({', '.join(CASES) or 'see code'})")
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="image sizes H = W")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--scales", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per row (CPU)")
    p.add_argument("--backends", nargs="+", default=[b for b in BACKENDS if b != "reference"])
    p.add_argument("--reference-eager", action="store_true",
                   help="also time the bit-exact reference in eager mode (slow on the CPU: int64 Philox)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")


def timeit(fn, device, repeat):
    """Median seconds per call."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100) * 1e-3
    fn()
    fn()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _plain_blur(x, w, scales):
    """A_w x as a user writes it: avg_pool2d + nearest interpolate."""
    H, W = x.shape[-2:]
    y = (1 - w.sum(1))[:, None, None, None] * x
    for j, k in enumerate(scales):
        p = F.avg_pool2d(x, k, k, ceil_mode=True)
        up = F.interpolate(p, scale_factor=k, mode="nearest")[..., :H, :W]
        y = y + w[:, j, None, None, None] * up
    return y


def _plain_stroke_noise(x0, a, s, wx, we, scales):
    eps = torch.randn_like(x0)
    ax, ae = _plain_blur(x0, wx, scales), _plain_blur(eps, we, scales)
    return a[:, None, None, None] * ax + s[:, None, None, None] * ae, ae


@case("stroke_noise")
def stroke_noise_rows(args, size):
    """(label, fn, bytes moved) for stroke_noise at (batch, channels, size, size)."""
    import diffaccel

    dev, B, C, scales = args.device, args.batch, args.channels, tuple(args.scales)
    x0 = torch.randn(B, C, size, size, device=dev)
    a, s = torch.rand(B, device=dev), torch.rand(B, device=dev)
    w = diffaccel.stroke_weights(torch.linspace(-5, 5, B, device=dev), scales)
    seeds = torch.arange(B, device=dev)
    nbytes = 3 * x0.numel() * x0.element_size()  # read x0, write x_t and target
    ref = lambda: reference.stroke_noise(x0, a, s, w, w, scales, seeds)  # noqa: E731
    plain = lambda: _plain_stroke_noise(x0, a, s, w, w, scales)  # noqa: E731
    rows = [(f"diffaccel[{b}]", (lambda b=b: diffaccel.stroke_noise(
        x0, a, s, scales=scales, data_weights=w, noise_weights=w, seed=seeds, backend=b)), nbytes)
        for b in _runnable(args, "stroke_noise")]
    return rows + _baselines(args, ref, plain, (reference.stroke_noise, (x0, a, s, w, w, scales, seeds)),
                             (_plain_stroke_noise, (x0, a, s, w, w, scales)), x0, nbytes)


@case("stroke_blur")
def stroke_blur_rows(args, size):
    import diffaccel

    dev, B, C, scales = args.device, args.batch, args.channels, tuple(args.scales)
    x = torch.randn(B, C, size, size, device=dev)
    w = diffaccel.stroke_weights(torch.linspace(-5, 5, B, device=dev), scales)
    nbytes = 2 * x.numel() * x.element_size()
    rows = [(f"diffaccel[{b}]", (lambda b=b: diffaccel.stroke_blur(x, w, scales, backend=b)), nbytes)
            for b in _runnable(args, "stroke_blur")]
    ref = lambda: reference.stroke_blur(x, w, scales)  # noqa: E731
    plain = lambda: _plain_blur(x, w, scales)  # noqa: E731
    return rows + _baselines(args, ref, plain, (reference.stroke_blur, (x, w, scales)),
                             (_plain_blur, (x, w, scales)), x, nbytes)


@case("error_moments")
def error_moments_rows(args, size):
    """VRG error moments over (batch, channels, size, size) float32 pred and target, 1000 bins."""
    from .reference import vrg as R
    from .vrg import error_moments

    dev, B, C, nb = args.device, args.batch, args.channels, 1000
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(B, C, size, size, generator=g).to(dev)
    target = torch.randn(B, C, size, size, generator=g).to(dev)
    bins = torch.randint(0, nb, (B,), generator=g).to(dev)
    nbytes = 2 * pred.numel() * pred.element_size()  # read pred and target once
    rows = [(f"diffaccel[{b}]", (lambda b=b: error_moments(pred, target, bins, nb, backend=b)), nbytes)
            for b in _runnable(args, "vrg_error_moments")]
    ref = lambda: R.error_moments(pred, target, bins, nb)  # noqa: E731
    rows.append(("reference eager", ref, nbytes))  # cheap here: a few reductions
    if not args.no_compile:
        cref = torch.compile(R.error_moments)
        rows.append(("reference compiled", lambda: cref(pred, target, bins, nb), nbytes))
    # the floor: one read of the same bytes
    rows.append(("floor: read same bytes", lambda: (pred.sum(), target.sum()), nbytes))
    return rows


def _runnable(args, op):
    out = []
    for b in args.backends:
        ok, _ = availability(b, torch.device(args.device).type, op)
        # the Triton interpreter on CPU is a correctness tool, far too slow to time
        if ok and not (b == "triton" and args.device == "cpu"):
            out.append(b)
    return out


def _baselines(args, ref, plain, ref_fn_args, plain_fn_args, like, nbytes):
    rows = []
    if args.reference_eager:
        rows.append(("reference eager", ref, nbytes))
    if not args.no_compile:
        cref = torch.compile(ref_fn_args[0])
        rows.append(("reference compiled", lambda: cref(*ref_fn_args[1]), nbytes))
    rows.append(("plain torch eager", plain, nbytes))
    if not args.no_compile:
        cplain = torch.compile(plain_fn_args[0])
        rows.append(("plain torch compiled", lambda: cplain(*plain_fn_args[1]), nbytes))
    n = nbytes // (2 * like.element_size())
    src = torch.empty(n, dtype=like.dtype, device=like.device).normal_()
    dst = torch.empty_like(src)
    rows.append(("floor: copy same bytes", lambda: dst.copy_(src), nbytes))
    return rows


def _device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    import os
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def run(args):
    print(f"device: {_device_name(args.device)}; torch {torch.__version__}")
    for op in args.ops:
        if op not in CASES:
            raise SystemExit(f"--ops: unknown case {op!r}; known: {sorted(CASES)}")
        for size in args.sizes:
            rows = CASES[op](args, size)
            times = {label: timeit(fn, args.device, args.repeat) for label, fn, _ in rows}
            scales = f" scales={tuple(args.scales)}" if op.startswith("stroke") else ""
            print(f"\n{op}  B={args.batch} C={args.channels} {size}x{size}{scales}")
            print(format_table(rows, times))
    return 0


def format_table(rows, times):
    def ratio(base, t):
        return f"{times[base] / t:8.2f}x" if base in times else "       -"

    lines = [f"{'':24s} {'time ms':>10s} {'vs ref eager':>12s} {'vs ref comp':>12s} "
             f"{'vs plain comp':>13s} {'GB/s':>8s}"]
    for label, _, nbytes in rows:
        t = times[label]
        lines.append(f"{label:24s} {t * 1e3:10.2f} {ratio('reference eager', t):>12s} "
                     f"{ratio('reference compiled', t):>12s} {ratio('plain torch compiled', t):>13s} "
                     f"{nbytes / t / 1e9:8.2f}")
    return "\n".join(lines)
