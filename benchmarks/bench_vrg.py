"""VRG benchmarks: ``error_moments`` on every backend beside the PyTorch reference (eager and
``torch.compile``) and a bandwidth floor, and ``optimize_trajectory`` against the VRG paper's
optimizer on the CIFAR-10 table (wall time and final cpe side by side).

    python benchmarks/bench_vrg.py --data DIR      # both parts (the paper's optimizer: ~2.5 min)
    python benchmarks/bench_vrg.py --quick         # small sizes, paper's optimizer 300 epochs

The error_moments table is the package's (``python -m diffaccel bench --ops error_moments``);
the optimizer comparison needs the VRG paper's published CIFAR-10 files
(``MSE_vs_alpha_bar_cifar10.txt`` and ``dpm_alphaBar_1-010-time_quadratic.txt``, released with
the paper under a non-commercial licence, so not shipped here) in ``--data DIR`` or
``$DIFFACCEL_VRG_DATA``; without them that part is skipped.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from diffaccel.bench import Col, format_table

VRG_FILES = ("MSE_vs_alpha_bar_cifar10.txt", "dpm_alphaBar_1-010-time_quadratic.txt")


def data_dir(arg=None):
    """The folder holding the VRG paper's files: ``arg``, else ``$DIFFACCEL_VRG_DATA``, else None."""
    d = arg or os.environ.get("DIFFACCEL_VRG_DATA")
    return Path(d) if d else None


def optimizer_rows(data, paper_epochs=3000, steps=1500, candidates=64, seed=0, paper_seed=0,
                   progress=False):
    """The VRG paper's optimizer (lp 0.01, soft pin 100, SGD, ``paper_epochs``) and
    ``optimize_trajectory`` on the same problem (lp 0.01, the same soft pin), plus
    optimize_trajectory with the last level pinned exactly and with DPM-Solver-2M: rows of
    (name, seconds, cpe, loss, abar_N)."""
    import diffaccel.vrg as vrg

    table = vrg.MSETable.load(Path(data) / VRG_FILES[0])
    init = vrg.load_trajectory(Path(data) / VRG_FILES[1])
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


OPTIMIZER_COLS = [Col("name", 58, align="<"), Col("wall", 9, ".2f", suffix="s"), Col("x paper", 8, ".1f"),
                  Col("cpe", 10, ".6f"), Col("loss", 10, ".6f"), Col("abar_N", 10, ".3e")]


def format_optimizer(rows):
    base = rows[0]["seconds"]
    return format_table(OPTIMIZER_COLS, [
        (r["name"], r["seconds"], base / r["seconds"], r["cpe"], r["loss"], r["abar_last"]) for r in rows],
        title=f"trajectory optimization, CIFAR-10 table, 10-step time-quadratic start "
              f"(cpe {rows[0]['init_cpe']:.7f})",
        note="wall: one run, no warm-up (each optimizer's own clock)")


def run(quick=False, paper=True, threads=None, data=None, out=sys.stdout):
    if threads:
        torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    size, B = (32, 64) if quick else (64, 256)
    # error_moments beside the reference and the floor: the package's benchmark table
    from diffaccel.bench import add_arguments, run as bench_table

    p = argparse.ArgumentParser()
    add_arguments(p)
    bench_table(p.parse_args(["--ops", "error_moments", "--batch", str(B), "--sizes", str(size),
                              "--device", dev, "--repeat", "10" if quick else "30"]))
    res = {}
    if paper:
        d = data_dir(data)
        missing = [f for f in VRG_FILES if d is None or not (d / f).is_file()]
        if missing:
            print(f"optimizer comparison skipped: {', '.join(missing)} not found in "
                  f"{d if d else '(no --data DIR or $DIFFACCEL_VRG_DATA given)'}", file=out)
            return res
        orows = optimizer_rows(d, paper_epochs=300 if quick else 3000, steps=300 if quick else 1500,
                               candidates=16 if quick else 64)
        print(format_optimizer(orows), file=out, flush=True)
        res["optimizer"] = orows
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 300 paper epochs")
    p.add_argument("--no-paper", action="store_true", help="skip the optimizer comparison")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default=None,
                   help="folder with the VRG paper's CIFAR-10 files (default: $DIFFACCEL_VRG_DATA)")
    args = p.parse_args(argv)
    run(quick=args.quick, paper=not args.no_paper, threads=args.threads, data=args.data)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "0")
    sys.exit(main())
