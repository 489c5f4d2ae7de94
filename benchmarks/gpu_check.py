"""``make gpu-check``: what a machine with a GPU proves about diffaccel's GPU kernels.

    python benchmarks/gpu_check.py preflight    # exit 2 with a message when there is no CUDA GPU
    python benchmarks/gpu_check.py arch         # the device's compute capability, e.g. "9.0"
    python benchmarks/gpu_check.py capture      # a 10-step sampling loop captured in a CUDA graph,
                                                # replayed, compared with eager (bit for bit)
    python benchmarks/gpu_check.py bench [--report gpu-report.md] [--device cpu --quick]

The bench times every op with the package timer, ``diffaccel.bench.timeit``
(``triton.testing.do_bench``'s median; on the CPU: the median of repeated runs), beside the reference in eager mode and under torch.compile and a device-to-device copy of
the same bytes, and prints the achieved GB/s and the fraction of the copy's bandwidth.
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

NO_GPU = ("make gpu-check needs a CUDA GPU and a CUDA build of torch; here "
          "torch.cuda.is_available() is False (torch {}, CUDA {}). Nothing was built or run.")


def preflight():
    """0 when a CUDA device is usable, else print why and return 2."""
    if not torch.cuda.is_available():
        print(NO_GPU.format(torch.__version__, torch.version.cuda), file=sys.stderr)
        return 2
    print(f"gpu-check on {torch.cuda.get_device_name(0)} (sm_{arch().replace('.', '')})")
    return 0


def arch():
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


# ------------------------------------------------------------------------------ capture

def sampling_loop(x, logp, sigmas, seed, steps):
    """Euler-Maruyama with the fused step on data x0 ~ N(0, I), whose exact denoiser is
    E[x0 | x] = x / (1 + sigma^2); in place on the static buffers x and logp."""
    import diffaccel.sampling as S

    B = x.shape[0]
    for i in range(steps):
        sig, nxt = sigmas[i], sigmas[i + 1]
        den = x / (1.0 + sig * sig)
        q = sig * sig - nxt * nxt
        coef = S.make_coef(B, ax=1 - q / sig ** 2, am=(q / sig ** 2,), az=q ** 0.5, sx=-1 / sig ** 2,
                           sm=(1 / sig ** 2,), c1=q / 2, c2=q ** 0.5, device=x.device)
        S.fused_step(x, [den], coef, logp=logp, seed=seed, offset=i * x.numel(), dist="normal")
    return x, logp


def capture_vs_eager(device, steps=10, shape=(4, 3, 32, 32), seed=1234):
    """(replayed x, eager x, replayed logp, eager logp) of `steps` fused steps: on CUDA the loop is
    captured once in a CUDA graph and replayed on fresh inputs copied into its static buffers; on
    the CPU (no graphs) the same static-buffer protocol runs the loop as the 'replay'."""
    sigmas = [10.0 * 0.7 ** i for i in range(steps + 1)]
    g = torch.Generator().manual_seed(seed)
    x_init = torch.randn(shape, generator=g).to(device) * sigmas[0]
    static_x = torch.zeros_like(x_init)
    static_lp = torch.zeros(shape[0], device=device, dtype=torch.float64)
    if torch.device(device).type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (Triton/cuBLAS lazy init) outside the capture
            sampling_loop(static_x, static_lp, sigmas, seed, steps)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sampling_loop(static_x, static_lp, sigmas, seed, steps)

        def replay():
            graph.replay()
    else:
        def replay():
            sampling_loop(static_x, static_lp, sigmas, seed, steps)
    static_x.copy_(x_init)
    static_lp.zero_()
    replay()
    x_eager, lp_eager = sampling_loop(x_init.clone(), torch.zeros_like(static_lp), sigmas, seed, steps)
    return static_x.clone(), x_eager, static_lp.clone(), lp_eager


# -------------------------------------------------------------------------------- bench

OPS = ("stroke_noise", "stroke_blur", "error_moments", "sample_step")


def _repeats(quick):
    """(timed runs per op row, per fused-step row) on the CPU."""
    return (3, 3) if quick else (7, 20)


def bench_rows(device, quick=False, compile_ref=True, ops=OPS):
    """[(case, label, seconds, bytes, copy seconds)] of every op at the benchmark shapes (B = 64
    and B = 1) on `device`. The fused step's rows come from benchmarks/bench_step.py (its floor
    writes the same bytes with one PyTorch op per output)."""
    from diffaccel import bench as DB

    p = argparse.ArgumentParser()
    DB.add_arguments(p)
    out = []
    sizes = [16] if quick else [64, 128]
    batches = [2, 1] if quick else [64, 1]
    for op in [o for o in ops if o != "sample_step"]:
        for B in batches:
            for size in sizes:
                args = p.parse_args([])
                args.device, args.batch, args.repeat = device, B, _repeats(quick)[0]
                args.reference_eager = True
                args.no_compile = not compile_ref
                rows = DB.CASES[op](args, size)
                times = {label: DB.timeit(fn, device, args.repeat) for label, fn, _ in rows}
                floor = next(lbl for lbl, _, _ in rows if lbl.startswith("floor"))
                name = f"{op} B={B} C=4 {size}x{size}"
                out += [(name, label, times[label], nbytes, times[floor]) for label, _, nbytes in rows]
    if "sample_step" not in ops:
        return out
    import bench_step

    for B in batches:
        shape = (4, 16, 16) if quick else (4, 64, 64)
        rows = bench_step.step_rows(B=B, shape=shape, device=device, repeats=_repeats(quick)[1])
        for kind in sorted({r["kind"] for r in rows}):
            kr = [r for r in rows if r["kind"] == kind and r["seconds"]]
            floor = next(r for r in kr if r["name"].startswith("floor"))
            name = f"sample_step[{kind}] B={B} {shape}"
            out += [(name, r["name"], r["seconds"], r["gbps"] * r["seconds"] * 1e9, floor["seconds"])
                    for r in kr]
    return out


def timer_statistic(device, quick=False):
    """How bench_rows' times were taken (one sentence for the report)."""
    from diffaccel import bench as DB

    if torch.device(device).type == "cuda":
        return DB.statistic(device=device)
    import bench_step

    ops, step = _repeats(quick)
    return f"ops: {DB.statistic(ops)}; sample_step: {bench_step.step_statistic(device, step)}"


def format_report(rows, device, quick=False):
    from diffaccel import bench as DB

    cols = [DB.Col("", align="<"), DB.Col("time ms", fmt=".3f"), DB.Col("GB/s", fmt=".1f"),
            DB.Col("of copy", fmt=".2f")]
    lines = [f"# diffaccel gpu-check report", "",
             f"device: {DB._device_name(device)}; torch {torch.__version__}"
             + (f"; CUDA {torch.version.cuda}" if torch.version.cuda else ""), "",
             "GB/s counts the bytes each op must move; 'of copy' is the copy's time over the op's "
             "(1.00 = as fast as a device-to-device copy of the same bytes).", "",
             f"Times: {timer_statistic(device, quick)}.", ""]
    cases = {}
    for name, label, t, nbytes, t_copy in rows:
        cases.setdefault(name, []).append((label, t * 1e3, nbytes / t / 1e9, t_copy / t))
    for name, body in cases.items():
        lines += ["", f"## {name}", "", DB.format_table(cols, body, markdown=True)]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["preflight", "arch", "capture", "bench"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes (exercising the bench on CPU)")
    p.add_argument("--report", default=None, help="write the bench as markdown here")
    a = p.parse_args(argv)
    if a.what == "preflight":
        return preflight()
    if a.what == "arch":
        print(arch())
        return 0
    if a.device == "cuda" and preflight():
        return 2
    if a.what == "capture":
        xr, xe, lr, le = capture_vs_eager(a.device)
        ok = torch.equal(xr, xe) and torch.equal(lr, le)
        print(f"CUDA-graph replay of 10 fused steps vs eager: {'identical' if ok else 'DIFFERENT'} "
              f"(max |dx| {float((xr - xe).abs().max()):.3g}, max |dlogp| {float((lr - le).abs().max()):.3g})")
        return 0 if ok else 1
    rows = bench_rows(a.device, quick=a.quick, compile_ref=not a.quick)
    text = format_report(rows, a.device, quick=a.quick)
    print(text)
    if a.report:
        with open(a.report, "w") as f:
            f.write(text)
        print(f"wrote {a.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
