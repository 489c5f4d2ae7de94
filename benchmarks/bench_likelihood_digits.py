"""Likelihood solvers on a real network: the demo's digits UNet (``diffaccel/demo``: a 0.7M-parameter
``diffusers.UNet2DModel`` eps-predictor on scikit-learn's 8x8 digits, DDPM linear schedule, its
shipped ``plain`` weights) as a k-diffusion denoiser (``VPEpsDenoiser``), on held-out digits
(uniformly dequantized, as the demo does), sigma from the schedule's ends (0.01 -> 157).

    python benchmarks/bench_likelihood_digits.py [--B 8] [--ref-steps 999] [--ref-probes 64]
        [--nfes 25,50,100,200] [--threads 1] [--cache /tmp]

The reference is ``expint`` (order 4) with ``--ref-steps`` + 1 evaluations (default 1000) and
``--ref-probes`` (default 64) fresh Rademacher probes per evaluation; it is cached in ``--cache``
(its latent and Delta, keyed by the sizes and the weights' hash), so re-runs skip it. Every
row's error is its mean |log p - reference| over the held-out batch, both with the standard
prior (the reference's own Hutchinson standard error is printed). Rows: k-diffusion's own
``log_likelihood`` (real package, one probe fixed for the whole solve; when installed), our
``dopri5``, ``rk4``, and ``expint`` with 1 and 4 probes and with the subspace control variate
(also switched on at every sigma, to show where it does not help). Held-out bits per dimension
(17-level pixels) are the reference's with the standard, matched and empirical priors.

Functions: :func:`problem`, :func:`reference`, :func:`table`.
"""
import argparse
import hashlib
import math
import os
import sys

import torch

from diffaccel.bench import Col, format_table, statistic, timed

COLS = [Col("method", 40, align="<"), Col("NFE", 5, "d"), Col("vjp/eval", 8, ".2f"),
        Col("wall", 8, ".2f", suffix="s"), Col("mean |err|", 10, ".4f"), Col("mean err", 9, ".4f")]
ONE_RUN = dict(repeat=1, warmup=0)  # each solve is timed once, as a whole


def problem(B, kind="plain"):
    """(denoiser, held-out x (B, 1, 8, 8), training x, sigma_min, sigma_max, weights hash)."""
    from diffaccel.demo import data as D
    from diffaccel.demo import train as T
    from diffaccel.sampling import VPEpsDenoiser
    path = T.weights_path(kind)
    unet = T.load(path)
    for p in unet.parameters():
        p.requires_grad_(False)
    abar = T.make_scheduler().alphas_cumprod.to(torch.float64)
    model = VPEpsDenoiser(lambda x, t: unet(x, t).sample, abar)
    x_train, _, x_test, _ = D.load_digits_split()
    g = torch.Generator().manual_seed(5)  # the demo's held-out dequantization
    x = D.dequantize(x_test[:B], generator=g)
    xtr = D.dequantize(x_train, generator=torch.Generator().manual_seed(6))
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    smin = float(math.sqrt((1 - abar[0]) / abar[0]))
    smax = float(math.sqrt((1 - abar[-1]) / abar[-1]))
    return model, x, xtr, smin, smax, digest


def reference(model, x, smin, smax, steps, probes, cache, key, out=sys.stdout):
    """{"logp" (standard prior), "x_T", "delta", "stderr", "nfe", "seconds"}: expint order 4,
    cached under ``cache`` (None: not cached)."""
    import diffaccel.sampling as S
    path = os.path.join(cache, f"diffaccel-lik-digits-ref-{key}.pt") if cache else None
    if path and os.path.exists(path):
        ref = torch.load(path)
        print(f"reference: read from {path}", file=out)
        return ref
    (lp, info), sec = timed(lambda: S.log_likelihood(model, x, smin, smax, solver="expint", steps=steps,
                                                     probes=probes, seed=12345, backend="cpu"), **ONE_RUN)
    ref = {"logp": lp, "x_T": info["x_T"], "delta": info["delta"], "stderr": info["stderr"],
           "nfe": info["nfe"], "seconds": sec}
    if path:
        torch.save(ref, path)
    return ref


def table(model, x, xtr, smin, smax, ref, nfes=(25, 50, 100, 200), backend="cpu", out=sys.stdout,
          kdiffusion=True):
    import diffaccel.sampling as S
    D = x[0].numel()
    B = x.shape[0]
    priors = {"N(0, s^2 I)": lambda xt: S.prior_logp(xt, smax),
              "matched": lambda xt, m=S.MatchedPrior.from_data(xtr): m(xt, smax)}
    if hasattr(S, "EmpiricalPrior"):
        emp = S.EmpiricalPrior(xtr)
        priors["empirical"] = lambda xt: emp(xt, smax)
    print(f"reference: expint4, {ref['nfe']} evaluations x {ref.get('probes', '?')} probes "
          f"({ref['seconds']:.0f} s); its standard error: mean {float(ref['stderr'].mean()):.3f} "
          f"nats, max {float(ref['stderr'].max()):.3f}", file=out)
    from diffaccel.demo.data import discrete_bits_per_dim
    for name, p in priors.items():
        bpd = discrete_bits_per_dim(p(ref["x_T"]) - ref["delta"], D)
        print(f"held-out bits/dim (17-level pixels, {B} digits), prior {name}: "
              f"{float(bpd.mean()):.4f} +- {float(bpd.std() / math.sqrt(B)):.4f}", file=out)
    print(format_table(COLS, [], title=f"wall: each solve, {statistic(**ONE_RUN)}"), file=out, flush=True)
    rows = []

    def add(method, nfe, vjps, dt, lp):
        e = (lp.double() - ref["logp"]).double()
        rows.append({"method": method, "nfe": nfe, "vjps_per_eval": vjps / max(nfe, 1),
                     "seconds": dt, "mae": float(e.abs().mean()), "bias": float(e.mean())})
        r = rows[-1]
        print(format_table(COLS, [(method, nfe, r["vjps_per_eval"], dt, r["mae"], r["bias"])], header=False),
              file=out, flush=True)

    def run(method, **kw):
        (lp, info), sec = timed(lambda: S.log_likelihood(model, x, smin, smax, seed=7, backend=backend, **kw),
                                **ONE_RUN)
        add(method, info["nfe"], info["vjps"], sec, lp)

    kd = None
    if kdiffusion:
        from bench_likelihood import kdiffusion_log_likelihood
        kd = kdiffusion_log_likelihood()
    if kd is not None:
        for tol in (1e-2, 1e-3, 1e-4):
            torch.manual_seed(7)
            (lp, info), sec = timed(lambda: kd(model, x, smin, smax, atol=tol, rtol=tol), **ONE_RUN)
            add(f"k-diffusion dopri5 {tol:g}", info["fevals"], info["fevals"], sec, lp)
    for tol in (1e-2, 1e-3, 1e-4):
        run(f"dopri5 {tol:g}", solver="dopri5", atol=tol, rtol=tol)
    for nfe in nfes:
        run(f"rk4 {nfe // 4} steps", solver="rk4", steps=nfe // 4)
    for nfe in nfes:
        run(f"expint4 {nfe - 1} steps, 1 probe", solver="expint", steps=nfe - 1)
        run(f"expint4 {nfe - 1} steps, 4 probes", solver="expint", steps=nfe - 1, probes=4)
        run(f"expint4 {nfe - 1} steps, subspace CV", solver="expint", steps=nfe - 1, divergence="subspace")
        run(f"expint4 {nfe - 1} steps, subspace CV all sigma", solver="expint", steps=nfe - 1,
            divergence="subspace", cv_sigma=0.0)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--ref-steps", type=int, default=999)
    p.add_argument("--ref-probes", type=int, default=64)
    p.add_argument("--nfes", default="25,50,100,200")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="/tmp", help="folder for the cached reference ('' : none)")
    p.add_argument("--no-kdiffusion", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, x, xtr, smin, smax, digest = problem(a.B)
    print(f"demo UNet (plain, {digest}), {a.B} held-out digits, sigma {smin:.4g} -> {smax:.4g}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    ref = reference(model, x, smin, smax, a.ref_steps, a.ref_probes, a.cache or None,
                    f"{digest}-B{a.B}-N{a.ref_steps}-P{a.ref_probes}")
    ref.setdefault("probes", a.ref_probes)
    table(model, x, xtr, smin, smax, ref, tuple(int(n) for n in a.nfes.split(",")),
          kdiffusion=not a.no_kdiffusion)


if __name__ == "__main__":
    main()
