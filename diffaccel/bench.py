"""The package's benchmark harness: one timer (:func:`timeit`, :func:`timed`), the sentence that
states its statistic in every table (:func:`statistic`) and one table formatter
(:func:`format_table`), used by every script in ``benchmarks/`` and by the demo; and the
benchmark table itself: every available backend beside the reference (eager and torch.compile),
the plain-PyTorch version a user would write (eager and compiled), and the bandwidth floor (a
copy of the same bytes), all in one run. ``python -m diffaccel bench --help``.

On a GPU times come from ``triton.testing.do_bench`` (its median); on the CPU from the median of
repeated wall-clock runs after warm-up. Ratios within one run mean more than absolute times.
"""
import statistics
import time
from typing import Callable, NamedTuple, Union

import torch
import torch.nn.functional as F

from . import reference
from .backends import BACKENDS, availability

# ------------------------------------------------------------------------------ the timer

REPEAT, WARMUP = 7, 2
DO_BENCH = dict(warmup=25, rep=100)  # triton.testing.do_bench's budget, in ms


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device="cpu", repeat=REPEAT, warmup=WARMUP, min_time=0.0):
    """``(fn's last result, median wall-clock seconds of one call)``: ``warmup`` untimed calls,
    then ``repeat`` timed ones (more, up to ``10 * repeat``, until ``min_time`` seconds have
    passed), the device synchronized after each. ``repeat=1, warmup=0`` times one whole run (a
    solve whose result is wanted too)."""
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    runs = []
    start = time.perf_counter()
    while len(runs) < repeat or (time.perf_counter() - start < min_time and len(runs) < 10 * repeat):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        runs.append(time.perf_counter() - t0)
    return out, statistics.median(runs)


def timeit(fn, device="cpu", repeat=REPEAT, warmup=WARMUP, min_time=0.0):
    """Median seconds per call of ``fn()``: on a CUDA device ``triton.testing.do_bench``'s median
    (CUDA events, its own warm-up and repeat budget); elsewhere :func:`timed`'s."""
    if torch.device(device).type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median", **DO_BENCH) * 1e-3
    return timed(fn, device, repeat, warmup, min_time)[1]


def statistic(repeat=REPEAT, warmup=WARMUP, min_time=0.0, device="cpu"):
    """The sentence a table states for times from :func:`timeit` (``device`` as given to it) or
    :func:`timed` (leave ``device`` out), e.g. "median of 7 runs after 2 warm-up"."""
    if torch.device(device).type == "cuda":
        return (f"median of triton.testing.do_bench (CUDA events, {DO_BENCH['warmup']} ms warm-up, "
                f"{DO_BENCH['rep']} ms of runs)")
    if min_time:
        s = f"median of {repeat} to {10 * repeat} runs (at least {min_time:g} s)"
    elif repeat == 1:
        s = "one run"
    else:
        s = f"median of {repeat} runs"
    return s + (f" after {warmup} warm-up" if warmup else ", no warm-up")


# ------------------------------------------------------------------------- the table


class Col(NamedTuple):
    """One column of :func:`format_table`: header ``name``; cells padded to ``width`` with
    ``align`` (``"<"`` or ``">"``); numbers written with the format spec ``fmt`` (``".2f"``,
    ``"d"``) followed by ``suffix`` (a unit), or by ``fmt`` itself when it is a callable; strings
    as they are; None as "-"."""
    name: str
    width: int = 0
    fmt: Union[str, Callable] = ""
    align: str = ">"
    suffix: str = ""

    def cell(self, v):
        if callable(self.fmt) and not isinstance(v, str):
            return self.fmt(v)
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        return format(v, self.fmt) + self.suffix


def format_table(cols, rows, title=None, note=None, markdown=False, header=True):
    """Rows (sequences, one value per :class:`Col`) as text: fixed-width columns joined by one
    space, or a markdown table (``markdown=True``: widths ignored; ``"<"`` columns left-aligned,
    ``">"`` right-aligned). ``title`` goes above, ``note`` (say: the timer's :func:`statistic`)
    below; ``header=False`` leaves the header out (a table printed row by row)."""
    def line(cells):
        if markdown:
            return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
        return " ".join(f"{c:{col.align}{col.width}}" for col, c in zip(cols, cells)).rstrip()

    out = [title] if title is not None else []
    if header:
        out.append(line([c.name for c in cols]))
        if markdown:
            out.append("|" + "|".join("---:" if c.align == ">" else "---" for c in cols) + "|")
    for r in rows:
        out.append(line([col.cell(v) for col, v in zip(cols, r)]))
    if note is not None:
        out.append(note)
    return "\n".join(out)


def runnable(op, device, backends=None):
    """The backends (of ``backends``, default every fast one) that can run ``op`` on ``device``
    and are worth timing: the Triton interpreter on the CPU is a correctness tool, far too slow
    to time."""
    device = torch.device(device).type
    out = []
    for b in backends if backends is not None else [b for b in BACKENDS if b != "reference"]:
        ok, _ = availability(b, device, op)
        if ok and not (b == "triton" and device == "cpu"):
            out.append(b)
    return out


def randn_inputs(generator, shape, n, device):
    """``n`` standard-normal float32 tensors of ``shape`` drawn on the CPU from ``generator``
    (the same numbers on every device), moved to ``device``."""
    return [torch.randn(shape, generator=generator).to(device) for _ in range(n)]


# ---------------------------------------------------------------- the benchmark table

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
    p.add_argument("--repeat", type=int, default=REPEAT, help="timed runs per row (CPU)")
    p.add_argument("--backends", nargs="+", default=[b for b in BACKENDS if b != "reference"])
    p.add_argument("--reference-eager", action="store_true",
                   help="also time the bit-exact reference in eager mode (slow on the CPU: int64 Philox)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")


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
    pred, target = randn_inputs(g, (B, C, size, size), 2, dev)
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
    return runnable(op, args.device, args.backends)


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


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo; else what ``platform`` says)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
            print(format_rows(rows, times, statistic(args.repeat, device=args.device)))
    return 0


RATIOS = (("vs ref eager", "reference eager"), ("vs ref comp", "reference compiled"),
          ("vs plain comp", "plain torch compiled"))


def format_rows(rows, times, note=None):
    """The benchmark table of ``rows`` (label, fn, bytes) timed as ``times`` {label: seconds}:
    time, speed-up over each baseline present, achieved GB/s; ``note`` below (the statistic)."""
    cols = [Col("", 24, align="<"), Col("time ms", 10, ".2f")]
    cols += [Col(name, max(len(name), 12), ".2f", suffix="x") for name, _ in RATIOS]
    cols.append(Col("GB/s", 8, ".2f"))
    body = []
    for label, _, nbytes in rows:
        t = times[label]
        body.append([label, t * 1e3, *[times[base] / t if base in times else None for _, base in RATIOS],
                     nbytes / t / 1e9])
    return format_table(cols, body, note=note)
