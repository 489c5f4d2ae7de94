"""VRG benchmarks: ``error_moments`` on every backend beside the PyTorch reference (eager and
``torch.compile``) and a bandwidth floor, and ``optimize_trajectory`` against the VRG paper's
optimizer on the CIFAR-10 table (wall time and final cpe side by side).

    python benchmarks/bench_vrg.py                 # both parts (the paper's optimizer: ~2.5 min)
    python benchmarks/bench_vrg.py --quick         # small sizes, paper's optimizer 300 epochs

Functions for the CLI: :func:`moments_rows`, :func:`optimizer_rows`, :func:`format_moments`,
:func:`format_optimizer`, :func:`run`.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vrg"


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device="cpu", repeats=30, warmup=3, min_time=0.3):
    """Median wall time (seconds) of ``fn()`` over ``repeats`` calls (more while under
    ``min_time`` in total), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 10 * repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def moments_rows(B=256, shape=(4, 64, 64), num_bins=1000, dtype=torch.float32, device=None,
                 repeats=30, backends=None):
    """Rows (name, seconds, GB/s) of error_moments at (B, *shape), one per backend that runs
    here, the reference eager and compiled, and the floor: reading pred and target once
    (``pred.sum()`` and ``target.sum()``, PyTorch's fastest single-pass reads of the same
    bytes). GB/s counts the bytes of pred and target."""
    import diffaccel.vrg as vrg
    from diffaccel.backends import availability
    from diffaccel.reference import vrg as R

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(0)
    pred = torch.randn((B,) + tuple(shape), generator=g).to(device, dtype)
    target = torch.randn((B,) + tuple(shape), generator=g).to(device, dtype)
    bins = torch.randint(0, num_bins, (B,), generator=g).to(device)
    nbytes = 2 * pred.numel() * pred.element_size()
    rows = []

    def add(name, fn):
        t = time_call(fn, device, repeats)
        rows.append({"name": name, "seconds": t, "gbps": nbytes / t / 1e9})

    add("reference eager", lambda: R.error_moments(pred, target, bins, num_bins))
    compiled = torch.compile(R.error_moments)
    add("reference compiled", lambda: compiled(pred, target, bins, num_bins))
    for name in backends or ("cpu", "triton", "cuda"):
        ok, why = availability(name, device.type, "vrg_error_moments")
        if not ok or (name == "triton" and device.type == "cpu"):
            rows.append({"name": name, "seconds": None, "gbps": None,
                         "note": why if not ok else "Triton interpreter: not timed"})
            continue
        add(name, lambda name=name: vrg.error_moments(pred, target, bins, num_bins, backend=name))
    add("floor (pred.sum + target.sum)", lambda: (pred.sum(), target.sum()))
    eager = rows[0]["seconds"]
    comp = rows[1]["seconds"]
    for r in rows:
        if r["seconds"]:
            r["x_eager"], r["x_compiled"] = eager / r["seconds"], comp / r["seconds"]
    return rows


def format_moments(rows, title):
    out = [title, f"{'name':32s} {'time':>10s} {'x eager':>9s} {'x compiled':>11s} {'GB/s':>7s}"]
    for r in rows:
        if r["seconds"] is None:
            out.append(f"{r['name']:32s} {'-':>10s}   ({r.get('note', '')})")
            continue
        out.append(f"{r['name']:32s} {r['seconds'] * 1e3:8.3f}ms {r['x_eager']:9.2f} "
                   f"{r['x_compiled']:11.2f} {r['gbps']:7.2f}")
    return "\n".join(out)


def optimizer_rows(paper_epochs=3000, steps=1500, candidates=64, seed=0, paper_seed=0,
                   table_path=None, trajectory_path=None, progress=False):
    """The VRG paper's optimizer (lp 0.01, soft pin 100, SGD, ``paper_epochs``) and
    ``optimize_trajectory`` on the same problem (lp 0.01, the same soft pin), plus
    optimize_trajectory with the last level pinned exactly and with DPM-Solver-2M: rows of
    (name, seconds, cpe, loss, abar_N)."""
    import diffaccel.vrg as vrg

    table = vrg.MSETable.load(table_path or DATA / "MSE_vs_alpha_bar_cifar10.txt")
    init = vrg.load_trajectory(trajectory_path or DATA / "dpm_alphaBar_1-010-time_quadratic.txt")
    rows = []

    def add(name, res):
        rows.append({"name": name, "seconds": res.seconds, "cpe": res.cpe, "loss": res.loss,
                     "init_cpe": res.init_cpe, "abar_last": float(res.abar[-1]),
                     "abar": res.abar.tolist()})

    add(f"paper optimizer ({paper_epochs} epochs)",
        vrg.paper_optimizer(init, table, epochs=paper_epochs, seed=paper_seed, progress=progress))
    add(f"optimize_trajectory lp=0.01 pin=100 (K={candidates}, {steps} steps)",
        vrg.optimize_trajectory(init, table, lp=0.01, pin_last=100.0, candidates=candidates,
                                steps=steps, seed=seed))
    add(f"optimize_trajectory lp=0.01 pin exact (K={candidates}, {steps} steps)",
        vrg.optimize_trajectory(init, table, lp=0.01, pin_last=True, candidates=candidates,
                                steps=steps, seed=seed))
    add(f"  same, dpm2m (start cpe {vrg.cumulative_error(init, table, 'dpm2m').item():.6f})",
        vrg.optimize_trajectory(init, table, solver="dpm2m", lp=0.01, pin_last=100.0,
                                candidates=candidates, steps=steps, seed=seed))
    return rows


def format_optimizer(rows):
    base = rows[0]["seconds"]
    out = [f"trajectory optimization, CIFAR-10 table, 10-step time-quadratic start "
           f"(cpe {rows[0]['init_cpe']:.7f})",
           f"{'name':58s} {'wall':>9s} {'x paper':>8s} {'cpe':>10s} {'loss':>10s} {'abar_N':>10s}"]
    for r in rows:
        out.append(f"{r['name']:58s} {r['seconds']:8.2f}s {base / r['seconds']:8.1f} "
                   f"{r['cpe']:10.6f} {r['loss']:10.6f} {r['abar_last']:10.3e}")
    return "\n".join(out)


def run(quick=False, paper=True, threads=None, out=sys.stdout):
    if threads:
        torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    shape, B = ((4, 32, 32), 64) if quick else ((4, 64, 64), 256)
    info = f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}"
    rows = moments_rows(B=B, shape=shape, device=dev, repeats=10 if quick else 30)
    print(format_moments(rows, f"error_moments B={B} x {shape} float32, 1000 bins ({info})"),
          file=out, flush=True)
    res = {"moments": rows}
    if paper:
        if not DATA.is_dir():
            print(f"optimizer comparison skipped: no data at {DATA}", file=out)
            return res
        orows = optimizer_rows(paper_epochs=300 if quick else 3000, steps=300 if quick else 1500,
                               candidates=16 if quick else 64)
        print(format_optimizer(orows), file=out, flush=True)
        res["optimizer"] = orows
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 300 paper epochs")
    p.add_argument("--no-paper", action="store_true", help="skip the optimizer comparison")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    run(quick=args.quick, paper=not args.no_paper, threads=args.threads)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "0")
    sys.exit(main())
