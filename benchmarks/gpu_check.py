"""``make gpu-check``: what a machine with a GPU proves about diffaccel's GPU kernels.

    python benchmarks/gpu_check.py preflight    # exit 2 with a message when there is no CUDA GPU
    python benchmarks/gpu_check.py arch         # the device's compute capability, e.g. "9.0"
    python benchmarks/gpu_check.py capture      # a 10-step sampling loop captured in a CUDA graph,
                                                # replayed, compared with eager (bit for bit)
    python benchmarks/gpu_check.py bench [--report gpu-report.md] [--device cpu --quick]
    python benchmarks/gpu_check.py all --report gpu-report.md   # what `make gpu-check` runs

``all`` is one run for a short GPU window: it builds the extension for the present GPU's arch
only, runs the CUDA test selection (``pytest_command``) with compiled Triton (TRITON_INTERPRET=0)
and without ``-x``, the GPU-only cases (``CASES``: each in a subprocess under a timeout), the
capture and the bench; every step is timed, none stops the others, and ``gpu-report.md`` gets
every verdict and the benchmark rows. Exit status 1 when any check failed.

The bench times every op with the package timer, ``diffaccel.bench.timeit``
(``triton.testing.do_bench``'s median; on the CPU: the median of repeated runs), beside the reference in eager mode and under torch.compile and a device-to-device copy of
the same bytes, and prints the achieved GB/s and the fraction of the copy's bandwidth.
"""
import argparse
import os
import subprocess
import sys
import time

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


# --------------------------------------------------------------------- the whole check

ROOT = os.path.dirname(HERE)
PYTEST_SELECTION = "cuda or graph"


def gpu_check_env(arch_list):
    """Environment of the test run: compiled Triton (the test conftest only sets
    TRITON_INTERPRET=1 when it is unset), tests told the build has `arch_list` only."""
    env = dict(os.environ)
    env.update(TRITON_INTERPRET="0", DIFFACCEL_GPU_CHECK="1", DIFFACCEL_GPU_CHECK_ARCH=arch_list)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def pytest_command(junit=None, collect_only=False):
    """The gpu-check test selection: every test that needs CUDA, all of them (no -x)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests",
           "-k", PYTEST_SELECTION]
    if junit:
        cmd += [f"--junitxml={junit}"]
    if collect_only:
        cmd += ["--collect-only"]
    return cmd


def _run(cmd, env=None, timeout=None):
    """(ok, seconds, last lines of the output) of a command; a timeout is a failure."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        ok, out = r.returncode == 0, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        ok = False
        tail = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out = f"TIMED OUT after {timeout} s\n" + tail[-2000:]
    return ok, time.perf_counter() - t0, out


def junit_verdicts(path):
    """[(test id, verdict, message)] from a pytest junit xml file."""
    import xml.etree.ElementTree as ET

    rows = []
    if not os.path.exists(path):
        return rows
    for tc in ET.parse(path).getroot().iter("testcase"):
        name = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        verdict, msg = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                verdict, msg = "FAILED" if child.tag == "failure" else "ERROR", (child.get("message") or "")[:200]
            elif child.tag == "skipped":
                verdict, msg = "skipped", (child.get("message") or "")[:200]
        rows.append((name, verdict, msg))
    return rows


# GPU-only cases, each run as `python benchmarks/gpu_check.py case NAME` in its own process
# under a timeout (a hang is a failure, and a fault does not end the run).

def case_stroke_means_no_hang():
    """Review finding 1: the block-mean kernels at exactly 2^27 block means (their 32-bit thread
    stride used to wrap to 0: the kernel never returned), and grad_w against the CPU op."""
    import diffaccel  # noqa: F401
    ops = torch.ops.diffaccel
    g = torch.Generator().manual_seed(19)
    for shape, scales, compare in (((16, 4, 1024, 1024), (2,) * 8, True),
                                   ((128, 4, 1024, 1024), (2,), False)):
        x = torch.randn(shape, generator=g, dtype=torch.float32).half()
        gr = torch.randn(shape, generator=g, dtype=torch.float32).half()
        w = torch.rand(shape[0], len(scales), generator=g) / len(scales)
        gx, gw = ops.stroke_blur_backward(gr.cuda(), x.cuda(), w.cuda(), list(scales))
        torch.cuda.synchronize()
        if compare:
            gx_c, gw_c = ops.stroke_blur_backward(gr, x, w, list(scales))
            err = float((gw.cpu() - gw_c).abs().max() / gw_c.abs().max().clamp_min(1))
            assert err < 1e-4, f"grad_w differs from the CPU op: relative {err:.3g}"
            err = float((gx.cpu().float() - gx_c.float()).abs().max())
            assert err < 2e-2, f"grad_x differs from the CPU op: {err:.3g}"
        del x, gr, gx, gw
        torch.cuda.empty_cache()
    return "returned"


def case_triton_step_d1_seeds():
    """Review finding 2: the compiled Triton step with D = 1 and per-sample seeds."""
    import diffaccel.sampling as S

    out = []
    for shape in ((8,), (8, 1)):
        B = shape[0]
        x = torch.randn(shape, device="cuda")
        den = torch.randn(shape, device="cuda")
        coef = S.make_coef(B, ax=0.9, am=(0.1,), az=0.3, sx=-0.5, sm=(0.5,), c1=0.2, c2=0.3, device="cuda")
        seed = torch.arange(B, device="cuda")
        res = {}
        for be in ("triton", "reference"):
            lp = torch.zeros(B, device="cuda", dtype=torch.float64)
            xn = S.fused_step(x.clone(), [den], coef, logp=lp, seed=seed, dist="normal", backend=be)
            res[be] = (xn, lp)
        dx = float((res["triton"][0] - res["reference"][0]).abs().max())
        dl = float((res["triton"][1] - res["reference"][1]).abs().max())
        assert dx < 1e-4 and dl < 1e-3, f"{shape}: max |dx| {dx:.3g}, |dlogp| {dl:.3g}"
        out.append(f"{shape}: |dx| {dx:.2g}")
    return "; ".join(out)


def case_triton_is_compiled():
    """Review finding 4: the Triton kernels are JIT functions here, not the interpreter's."""
    import triton

    from diffaccel.kernels import step as KS

    k = KS._sample_step_kernel
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), os.environ.get("TRITON_INTERPRET")
    assert isinstance(k, triton.runtime.jit.JITFunction) and "Interpret" not in type(k).__name__, type(k)
    return type(k).__name__


def case_capture_fresh_shape():
    """Review finding 11 (and the CUDA ops' graph safety): stroke_noise with a general-path scale
    set warmed up at one shape, then captured in a CUDA graph at a shape never seen before."""
    import diffaccel

    out = []
    for be in ("cuda", "triton"):
        def call(x0):
            B = x0.shape[0]
            w = torch.full((B, 2), 0.3, device="cuda")
            return diffaccel.stroke_noise(x0, torch.full((B,), 0.8, device="cuda"),
                                          torch.full((B,), 0.6, device="cuda"), scales=(3, 5),
                                          data_weights=w, noise_weights=w, seed=7, backend=be)
        call(torch.randn(2, 3, 20, 20, device="cuda"))
        torch.cuda.synchronize()
        x0 = torch.randn(3, 3, 37, 29, device="cuda")
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            with torch.cuda.graph(graph):
                xt, tg = call(x0)
        torch.cuda.current_stream().wait_stream(side)
        graph.replay()
        xe, te = call(x0)
        assert torch.equal(xt, xe) and torch.equal(tg, te), f"{be}: replay differs from eager"
        out.append(f"{be} ok")
    return "; ".join(out)


def case_logp_batch_invariance():
    """Review finding 8 (issue item 2): one sample's logp bits alone (B = 1) and as row 5 of a
    B = 64 batch, D = 3*128*128, and with x at a 4-byte storage offset. Expected to differ until
    the GPU reductions' grouping depends on D alone (a known finding, reported, not fixed)."""
    import diffaccel.sampling as S

    g = torch.Generator().manual_seed(8)
    B, shp = 64, (3, 128, 128)
    x = torch.randn((B,) + shp, generator=g).cuda()
    den = torch.randn((B,) + shp, generator=g).cuda()
    seed = torch.arange(B, device="cuda")
    bad = []
    for be in ("cuda", "triton"):
        def lp_of(xx, dd, ss):
            n = xx.shape[0]
            coef = S.make_coef(n, ax=0.9, am=(0.1,), az=0.3, sx=-0.5, sm=(0.5,), c1=0.2, c2=0.3, device="cuda")
            lp = torch.zeros(n, device="cuda", dtype=torch.float64)
            S.fused_step(xx.clone(), [dd], coef, logp=lp, seed=ss, dist="normal", backend=be)
            return lp
        full = lp_of(x, den, seed)[5]
        one = lp_of(x[5:6], den[5:6], seed[5:6])[0]
        buf = torch.empty(x[5:6].numel() + 1, device="cuda")[1:].view_as(x[5:6])
        buf.copy_(x[5:6])
        off = lp_of(buf, den[5:6], seed[5:6])[0]
        if not (torch.equal(full, one) and torch.equal(one, off)):
            bad.append(f"{be}: B=64 {float(full)!r}, B=1 {float(one)!r}, offset {float(off)!r}")
    assert not bad, "; ".join(bad)
    return "identical bits"


def case_two_devices():
    """Review finding 6: every backend's stroke and step ops on cuda:1 while cuda:0 is current."""
    if torch.cuda.device_count() < 2:
        return "SKIP: one GPU"
    import diffaccel

    torch.cuda.set_device(0)
    x = torch.randn(2, 3, 24, 24, device="cuda:1")
    w = torch.full((2, 2), 0.3, device="cuda:1")
    ref = diffaccel.stroke_blur(x, w, (2, 3), backend="reference")
    for be in ("cuda", "triton"):
        y = diffaccel.stroke_blur(x, w, (2, 3), backend=be)
        torch.cuda.synchronize(1)
        assert y.device == x.device and float((y - ref).abs().max()) < 1e-4, be
    return "ok"


CASES = {
    "stroke_means_no_hang": (case_stroke_means_no_hang, 180),
    "triton_is_compiled": (case_triton_is_compiled, 60),
    "triton_step_d1_seeds": (case_triton_step_d1_seeds, 120),
    "capture_fresh_shape": (case_capture_fresh_shape, 120),
    "logp_batch_invariance": (case_logp_batch_invariance, 120),
    "two_devices": (case_two_devices, 120),
}


def run_case(name):
    fn, _ = CASES[name]
    msg = fn()
    print(f"CASE {name}: {msg}")
    return 0


def memcheck_command():
    """compute-sanitizer memcheck over the Triton CUDA cases of the stroke and noise ops (review
    finding 5: out-of-bounds reads in masked-off lanes), or None without compute-sanitizer."""
    import shutil

    tool = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
    if tool is None:
        return None
    return [tool, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-m", "pytest", "-q",
            "-p", "no:cacheprovider", "tests/ops/stroke", "tests/ops/noise", "-k", "triton and cuda"]


def run_all(report):
    """Every step of the check, none stopping the others; the report lists each verdict."""
    t_start = time.perf_counter()
    steps = []  # (step, verdict, seconds, detail)
    a = arch()
    env = gpu_check_env(a)
    build_env = dict(env, TORCH_CUDA_ARCH_LIST=a, DIFFACCEL_BUILD_CUDA="1", DIFFACCEL_REQUIRE_EXT="1")
    ok, sec, out = _run([sys.executable, "setup.py", "build_ext", "--inplace"], env=build_env, timeout=900)
    steps.append((f"build for sm_{a.replace('.', '')} only", "ok" if ok else "FAILED", sec, "" if ok else out[-1500:]))
    print(f"build: {'ok' if ok else 'FAILED'} ({sec:.0f} s)", flush=True)
    junit = os.path.join(ROOT, "gpu-check-pytest.xml")
    ok, sec, out = _run(pytest_command(junit), env=env, timeout=1800)
    tests = junit_verdicts(junit)
    counts = {v: sum(1 for _, vv, _ in tests if vv == v) for v in ("passed", "FAILED", "ERROR", "skipped")}
    steps.append((f"pytest -k '{PYTEST_SELECTION}' (compiled Triton)", "ok" if ok else "FAILED", sec,
                  ", ".join(f"{n} {v}" for v, n in counts.items())))
    print(f"pytest: {counts} ({sec:.0f} s)", flush=True)
    for name, (_, limit) in CASES.items():
        ok, sec, out = _run([sys.executable, os.path.join(HERE, "gpu_check.py"), "case", name], env=env, timeout=limit)
        line = next((ln for ln in out.splitlines() if ln.startswith("CASE ")), "")
        verdict = ("skipped" if "SKIP" in line else "ok") if ok else "FAILED"
        steps.append((f"case {name}", verdict, sec, line if ok else out[-800:]))
        print(f"case {name}: {verdict} ({sec:.0f} s)", flush=True)
    cmd = memcheck_command()
    if cmd is None:
        steps.append(("compute-sanitizer memcheck (Triton cuda cases)", "skipped", 0.0, "no compute-sanitizer"))
    else:
        ok, sec, out = _run(cmd, env=dict(env, PYTORCH_NO_CUDA_MEMORY_CACHING="1"), timeout=600)
        steps.append(("compute-sanitizer memcheck (Triton cuda cases)", "ok" if ok else "FAILED", sec,
                      "" if ok else out[-1500:]))
    ok, sec, out = _run([sys.executable, os.path.join(HERE, "gpu_check.py"), "capture"], env=env, timeout=300)
    steps.append(("capture: 10 fused steps in a CUDA graph vs eager", "ok" if ok else "FAILED", sec, out.strip()[-500:]))
    t0 = time.perf_counter()
    try:
        rows = bench_rows("cuda")
        bench_text = format_report(rows, "cuda")
        steps.append(("bench", "ok", time.perf_counter() - t0, f"{len(rows)} rows"))
    except Exception as e:  # the report still gets every other verdict
        bench_text = ""
        steps.append(("bench", "FAILED", time.perf_counter() - t0, repr(e)[:500]))
    failed = [s for s in steps if s[1] == "FAILED"]
    text = format_check_report(steps, tests, time.perf_counter() - t_start) + "\n" + bench_text
    with open(report, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {report}: {len(failed)} of {len(steps)} steps failed")
    return 1 if failed else 0


def format_check_report(steps, tests, seconds):
    lines = ["# diffaccel gpu-check", "",
             f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; "
             f"torch {torch.__version__}; total {seconds:.0f} s", "",
             "| step | verdict | seconds | detail |", "| --- | --- | --- | --- |"]
    for name, verdict, sec, detail in steps:
        d = " ".join(str(detail).split())[:300].replace("|", "/")
        lines.append(f"| {name} | {verdict} | {sec:.1f} | {d} |")
    if tests:
        lines += ["", "## every selected test", "", "| test | verdict | message |", "| --- | --- | --- |"]
        for name, verdict, msg in tests:
            lines.append(f"| {name} | {verdict} | {' '.join(msg.split())[:150].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["preflight", "arch", "capture", "bench", "all", "case"])
    p.add_argument("name", nargs="?", help="for `case`: one of " + ", ".join(CASES))
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
    if a.what == "all":
        return run_all(a.report or "gpu-report.md")
    if a.what == "case":
        return run_case(a.name)
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
