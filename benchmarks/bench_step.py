"""Fused sampler step benchmarks: one step with log-density tracking (B=64, 4x64x64) on every
backend beside a plain PyTorch step in eager mode and under ``torch.compile``, and the bandwidth
floor; and a whole ``log_likelihood`` on a Gaussian mixture (D = 3072) per solver.

    python benchmarks/bench_step.py            # both parts
    python benchmarks/bench_step.py --quick    # smaller sizes
    make bench-kdiffusion                      # the log_likelihood part beside k-diffusion's

Two steps are timed:

- ``em``: an Euler-Maruyama step with the zero-overhead log-density (reads x and the denoised
  x, draws z, writes x; logp += q|s|^2/2 + sqrt(q) s.z);
- ``ode``: a PF-ODE Euler step with one Hutchinson probe (reads x, the denoised x, the probe
  and its vjp; writes x and the next step's Rademacher probe; logp += c0 + cw v.w).

The plain PyTorch step draws its noise with ``torch.randn`` / ``torch.randint`` (PyTorch's own
generator, what a user would write); the fast backends draw the Philox stream of docs/math.md
Section 1 in the kernel. The floor moves the same bytes with one PyTorch op
(``torch.add(a, b, out=c)``-style reads and writes of the step's tensors).

Functions: :func:`step_rows`, :func:`likelihood_rows`, :func:`format_rows`, :func:`run`.
"""
import argparse
import os
import sys

import torch

from diffaccel.bench import Col, format_table, randn_inputs, statistic, timed, timeit

WARMUP = 3  # calls before the timed ones (CPU)
MIN_TIME = 0.3  # seconds: more timed runs (up to 10x) while faster than this (CPU)
REF_REPEATS = 3  # timed runs of the slow reference rows (CPU)


# ------------------------------------------------------------------------ plain PyTorch steps

def plain_em_step(x, den, sigma, sigma_next, logp):
    """Euler-Maruyama step with the zero-overhead log-density, written plainly."""
    q = sigma ** 2 - sigma_next ** 2
    s = (den - x) / sigma ** 2
    z = torch.randn_like(x)
    logp = logp + q / 2 * (s * s).flatten(1).sum(1) + torch.sqrt(q) * (s * z).flatten(1).sum(1)
    return x + q * s + torch.sqrt(q) * z, logp


def plain_ode_step(x, den, v, w, sigma, sigma_next, logp):
    """PF-ODE Euler step with a one-probe Hutchinson term and the next Rademacher probe."""
    h = sigma_next - sigma
    D = x[0].numel()
    logp = logp + h / sigma * ((v * w).flatten(1).sum(1) - D)
    v_next = torch.randint(0, 2, x.shape, device=x.device, dtype=x.dtype) * 2 - 1
    return x + h / sigma * (x - den), logp, v_next


def step_rows(B=64, shape=(4, 64, 64), dtype=torch.float32, device=None, repeats=20,
              backends=None, kinds=("em", "ode")):
    """Rows {name, kind, seconds, gbps, x_compiled, x_ref_compiled} per step kind: the plain step
    eager and compiled, each fast backend that runs here (Triton under the interpreter is not
    timed), and the floor. GB/s counts the bytes the step must move."""
    import diffaccel.sampling as S
    from diffaccel.backends import availability

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(0)
    x0, den = (t.to(dtype) for t in randn_inputs(g, (B,) + tuple(shape), 2, device))
    v = (torch.randint(0, 2, (1, B) + tuple(shape), generator=g) * 2 - 1).to(device, dtype)
    w = torch.randn((1, B) + tuple(shape), generator=g).to(device, dtype)
    seeds = torch.randint(0, 2 ** 40, (B,), generator=g).to(device)
    sig, nxt = torch.tensor(2.0, device=device), torch.tensor(1.8, device=device)
    logp = torch.zeros(B, device=device)
    esz = x0.element_size()
    rows = []
    for kind in kinds:
        n = x0.numel() * esz
        nbytes = 3 * n if kind == "em" else 6 * n  # em: x, den in, x out; ode: + v, w in, v out
        x = x0.clone()
        spare = torch.empty_like(v)
        buf = torch.empty_like(x0)

        def add(name, fn, repeats=repeats):
            t = timeit(fn, device, repeats, WARMUP, _min_time(repeats))
            rows.append({"kind": kind, "name": name, "seconds": t, "gbps": nbytes / t / 1e9})

        if kind == "em":
            plain = lambda: plain_em_step(x, den, sig, nxt, logp)  # noqa: E731
            comp_fn = torch.compile(plain_em_step)
            comp = lambda: comp_fn(x, den, sig, nxt, logp)  # noqa: E731

            def fast(backend):
                q = sig ** 2 - nxt ** 2
                gq = torch.sqrt(q)
                coef = S.make_coef(B, ax=1 - q / sig ** 2, am=(q / sig ** 2,), az=gq,
                                   sx=-1 / sig ** 2, sm=(1 / sig ** 2,), c1=q / 2, c2=gq)
                return S.fused_step(x, [den], coef, logp=logp, seed=seeds, offset=0,
                                    dist="normal", backend=backend)

            floor = lambda: torch.add(x0, den, out=buf)  # noqa: E731  (2 reads, 1 write)
        else:
            plain = lambda: plain_ode_step(x, den, v[0], w[0], sig, nxt, logp)  # noqa: E731
            comp_fn = torch.compile(plain_ode_step)
            comp = lambda: comp_fn(x, den, v[0], w[0], sig, nxt, logp)  # noqa: E731

            def fast(backend):
                r = (nxt - sig) / sig
                coef = S.make_coef(B, ax=1 + r, am=(-r,), c0=-x0[0].numel() * r, cw=(r,))
                return S.fused_step(x, [den], coef, logp=logp, probes=v, vjps=[w],
                                    probes_out=spare, seed=seeds, probe_offset=1 << 40,
                                    backend=backend)

            def floor():  # 4 reads, 2 writes
                torch.add(x0, den, out=buf)
                torch.add(v[0], w[0], out=spare[0])

        add("plain PyTorch eager", plain)
        add("plain PyTorch compiled", comp)
        # the contract (diffaccel.reference.step, Philox in int64 tensor ops), eager and compiled
        ref_comp = torch.compile(lambda: fast("reference"))
        add("reference eager", lambda: fast("reference"), repeats=REF_REPEATS)
        add("reference compiled", ref_comp, repeats=REF_REPEATS)
        for name in backends or ("cpu", "triton", "cuda"):
            ok, why = availability(name, device.type, "sample_step")
            if not ok or (name == "triton" and device.type == "cpu"):
                rows.append({"kind": kind, "name": name, "seconds": None, "gbps": None,
                             "note": why if not ok else "Triton interpreter: not timed"})
                continue
            add(f"diffaccel {name}", lambda name=name: fast(name))
        add("floor (same bytes, one PyTorch op per output)", floor)
    for kind in kinds:
        kr = {r["name"]: r for r in rows if r["kind"] == kind}
        comp, refc = kr["plain PyTorch compiled"]["seconds"], kr["reference compiled"]["seconds"]
        for r in kr.values():
            if r["seconds"]:
                r["x_compiled"], r["x_ref_compiled"] = comp / r["seconds"], refc / r["seconds"]
    return rows


def _min_time(repeats):
    return MIN_TIME if repeats > REF_REPEATS else 0.0


def step_statistic(device, repeats):
    """How step_rows(device=device, repeats=repeats) took its times (one sentence)."""
    if torch.device(device).type == "cuda":
        return statistic(device=device)
    return (f"{statistic(repeats, WARMUP, _min_time(repeats))}; reference rows: "
            f"{statistic(REF_REPEATS, WARMUP, _min_time(REF_REPEATS))}")


STEP_COLS = [Col("name", 46, align="<"), Col("time", 10, ".3f", suffix="ms"),
             Col("x plain comp.", 13, ".2f"), Col("x ref comp.", 11, ".2f"), Col("GB/s", 7, ".2f"),
             Col("", align="<")]


def format_rows(rows, title, note=None):
    """step_rows' table, one block per step kind; a backend that cannot run here gets "-" and
    the reason. ``note``: the timer's statistic (:func:`step_statistic`)."""
    out = [title]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        body = [(r["name"], r["seconds"] and r["seconds"] * 1e3, r.get("x_compiled"), r.get("x_ref_compiled"), r["gbps"],
                 f"({r['note']})" if r.get("note") else "")
                for r in rows if r["kind"] == kind]
        out.append(format_table([STEP_COLS[0]._replace(name=f"[{kind}] name"), *STEP_COLS[1:]], body))
    if note:
        out.append(note)
    return "\n".join(out)


# ------------------------------------------------------------------------ log_likelihood

def likelihood_rows(B=64, d=3072, K=4, solvers=(("heun", 49), ("rk4", 25), ("dopri5", None)),
                    backends=("cpu", "reference"), probes=1, seed=0, device=None):
    """Whole log_likelihood runs on a K-component Gaussian mixture in d dimensions
    (sigma 0.01 -> 80): rows {solver, steps, backend, seconds, nfe, mean_err, mean_abs_err}
    against the exact log p (the default N(0, sigma_max^2) prior, as k-diffusion)."""
    import diffaccel.sampling as S
    from diffaccel.backends import availability
    from diffaccel.models import GaussianMixture

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(seed)
    gm = GaussianMixture(torch.randn(K, d, generator=g, dtype=torch.float64) * 2,
                         torch.rand(K, generator=g) + 0.5, torch.rand(K, generator=g) * 0.5 + 0.3)
    x = gm.sample(B, generator=g).to(device)
    exact = gm.log_prob(x, 0.01)
    rows = []
    for solver, steps in solvers:
        for backend in backends:
            if not availability(backend, device.type, "sample_step")[0]:
                continue
            (lp, info), sec = timed(lambda: S.log_likelihood(
                gm, x, 0.01, 80.0, steps=steps, solver=solver, probes=probes, seed=1,
                backend=backend), device, repeat=1, warmup=0)
            steps_done = info["steps"]  # dopri5: per sample; the batch runs the longest
            steps_done = steps_done if isinstance(steps_done, int) else int(steps_done.max())
            rows.append(_likelihood_row(solver, steps_done, backend, sec, info["nfe"], lp, exact))
    kd = kdiffusion_row(gm, x, exact, device)
    if kd:
        rows.append(kd)
    return rows


def _likelihood_row(solver, steps, backend, seconds, nfe, lp, exact):
    e = (lp - exact).double().cpu()
    return {"solver": solver, "steps": steps, "backend": backend, "seconds": seconds, "nfe": nfe,
            "mean_err": float(e.mean()), "mean_abs_err": float(e.abs().mean())}


def kdiffusion_row(gm, x, exact, device, atol=1e-4, rtol=1e-4):
    """k-diffusion's own ``log_likelihood`` (torchdiffeq dopri5 in sigma, one Rademacher probe)
    on the same data, when k-diffusion is installed (it is not a dependency: its imports pull
    in clip, kornia, wandb, ...); else None."""
    try:
        from k_diffusion.sampling import log_likelihood as kd_log_likelihood
    except Exception:  # noqa: BLE001 (absent, or a broken install of one of its many imports)
        return None
    torch.manual_seed(1)
    (lp, info), sec = timed(lambda: kd_log_likelihood(gm, x.float(), 0.01, 80.0, atol=atol, rtol=rtol),
                            device, repeat=1, warmup=0)
    return _likelihood_row("dopri5", 0, "k-diffusion", sec, info["fevals"], lp, exact)


LIKELIHOOD_COLS = [Col("solver", 8, align="<"), Col("steps", 6), Col("backend", 12),
                   Col("wall", 9, ".2f", suffix="s"), Col("nfe", 5, "d"), Col("mean err", 10, ".3f"),
                   Col("mean |err|", 11, ".3f")]


def format_likelihood(rows, title):
    return format_table(LIKELIHOOD_COLS, [
        (r["solver"], str(r["steps"]) if r["steps"] else "-", r["backend"], r["seconds"], r["nfe"],
         r["mean_err"], r["mean_abs_err"]) for r in rows], title=title,
        note="wall: the whole log_likelihood, " + statistic(1, 0))


def run(quick=False, likelihood=True, step=True, threads=None, out=sys.stdout):
    if threads:
        torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, shape = (16, (4, 32, 32)) if quick else (64, (4, 64, 64))
    info = f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}"
    res = {}
    if step:
        repeats = 10 if quick else 20
        rows = step_rows(B=B, shape=shape, device=dev, repeats=repeats)
        print(format_rows(rows, f"fused sampler step with logp, B={B} x {shape} float32 ({info})",
                          "times: " + step_statistic(dev, repeats)), file=out, flush=True)
        res["step"] = rows
    if likelihood:
        lb, ld = (8, 256) if quick else (64, 3072)
        lrows = likelihood_rows(B=lb, d=ld)
        print(format_likelihood(lrows, f"log_likelihood, 4-component GM, D={ld}, B={lb}, one "
                                       f"Rademacher probe, sigma 0.01 -> 80"), file=out, flush=True)
        res["likelihood"] = lrows
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-likelihood", action="store_true")
    p.add_argument("--likelihood-only", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    run(quick=args.quick, likelihood=not args.no_likelihood, step=not args.likelihood_only,
        threads=args.threads)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "0")
    sys.exit(main())
