"""Likelihood solvers side by side: model evaluations x error x wall time on the 4-component
Gaussian mixture (D = 3072, B = 64, sigma 0.01 -> 80, exact log p from diffaccel.models).

    python benchmarks/bench_likelihood.py              # the full table (3 runs per row, median wall)
    python benchmarks/bench_likelihood.py --mean-scale 0.5   # the same on closer components
    python benchmarks/bench_likelihood.py --prior-only # each prior's own error, per mean scale
    python benchmarks/bench_likelihood.py --quick      # small sizes

Rows: k-diffusion's own ``log_likelihood`` (torchdiffeq dopri5 in sigma, one fixed Rademacher
probe; its real ``k_diffusion/sampling.py``, loaded with the package's heavy ``__init__``
stubbed, when k-diffusion 0.1.1.post1, torchdiffeq and torchsde are installed), our ``dopri5``
(tolerances 1e-2 .. 1e-5), ``rk4`` and ``expint`` (order 4, with 1 and 4 probes, and with the
``subspace`` control variate) at about 25 / 50 / 100 / 200 evaluations. Every run keeps its
latent ``x_T``, so four errors come from one run: with the standard prior ``N(0, sigma_max^2
I)`` (as used by k-diffusion), with the matched prior (mean and variance from 4096 fresh draws
of the mixture), with the empirical prior (those 4096 draws themselves) and with the exact
prior (the solver's own error). Errors are the mean over the batch of ``|log p - exact log p|``
in nats. Wall times are the package timer's (``diffaccel.bench.timed``): the median of
``--repeats`` identical runs, no warm-up (until issue 17: the minimum of those runs).

The mixture's means are ``mean_scale`` (default 2) times standard normal vectors, so the
components are ``mean_scale * sqrt(2 D)`` apart (157 at scale 2): at sigma_max = 80 they are
still about 2 noise standard deviations apart along their differences, and no single Gaussian
fits p_80 (``--prior-only`` prints each prior's own error against the exact log p_80, over
8192 draws of p_80, for several scales).

Functions: :func:`gmm_problem`, :func:`kdiffusion_log_likelihood`, :func:`prior_errors`,
:func:`likelihood_table`, :func:`format_table`.
"""
import argparse
import importlib.util
import os
import sys
import types

import torch

from diffaccel.bench import Col, statistic, timed
from diffaccel.bench import format_table as _table


def gmm_problem(B=64, d=3072, K=4, seed=0, mean_scale=2.0):
    """(mixture, x, exact log p at 0.01): the mixture of bench_step's likelihood part (means
    ``mean_scale`` randn, weights U(0.5, 1.5), stds U(0.3, 0.8))."""
    from diffaccel.models import GaussianMixture
    g = torch.Generator().manual_seed(seed)
    gm = GaussianMixture(torch.randn(K, d, generator=g, dtype=torch.float64) * mean_scale,
                         torch.rand(K, generator=g) + 0.5, torch.rand(K, generator=g) * 0.5 + 0.3)
    x = gm.sample(B, generator=g)
    return gm, x, gm.log_prob(x, 0.01)


def kdiffusion_log_likelihood():
    """k-diffusion's ``log_likelihood`` from its real ``sampling.py``: the package ``__init__``
    imports its training stack (clip, kornia, wandb, ...), so the parent package is a stub and
    ``utils`` offers the one helper ``sampling.py`` uses on this path (``append_dims``, the same
    two lines as k-diffusion's). None when k-diffusion or torchdiffeq is absent."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or importlib.util.find_spec("torchdiffeq") is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "sampling.py")
    pkg = types.ModuleType("_kd_stub")
    pkg.__path__ = []
    utils = types.ModuleType("_kd_stub.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]
    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules.setdefault("_kd_stub", pkg)
    sys.modules.setdefault("_kd_stub.utils", utils)
    mspec = importlib.util.spec_from_file_location("_kd_stub.sampling", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.log_likelihood


def _priors(gm, smax=80.0, n=4096, seed=7):
    """{name: log-prior of x_T}: standard, matched and empirical from ``n`` fresh draws, exact."""
    import diffaccel.sampling as S
    data = gm.sample(n, generator=torch.Generator().manual_seed(seed))
    matched, emp = S.MatchedPrior.from_data(data), S.EmpiricalPrior(data)
    return {"standard": lambda xt: S.prior_logp(xt, smax), "matched": lambda xt: matched(xt, smax),
            "empirical": lambda xt: emp(xt, smax), "exact": lambda xt: gm.log_prob(xt, smax)}


def prior_errors(scales=(2.0, 1.0, 0.5, 0.25), d=3072, n=8192, smax=80.0, out=sys.stdout):
    """Each prior's own error: mean |log prior(x_T) - log p_80(x_T)| over ``n`` draws x_T of
    p_80 (the PF-ODE maps p_0 to p_80, so this is the error's distribution over encoded data),
    per mean scale; with the mixture's geometry (mean norms, pairwise distances, per-dimension
    variance)."""
    rows = []
    for c in scales:
        gm, _, _ = gmm_problem(B=1, d=d, mean_scale=c)
        pr = _priors(gm, smax)
        xt = gm.sample(n, generator=torch.Generator().manual_seed(11), sigma=smax, dtype=torch.float64)
        exact = pr["exact"](xt)
        pair = torch.cdist(gm.means, gm.means)
        row = {"scale": c, "mean_norm": float(gm.means.norm(dim=1).mean()),
               "pairwise": float(pair[pair > 0].mean())}
        for name in ("standard", "matched", "empirical"):
            e = pr[name](xt) - exact
            row[name] = (float(e.abs().mean()), float(e.std()))
        rows.append(row)
        print(f"mean scale {c:5.2f}: |mu_k| {row['mean_norm']:6.1f}, |mu_i - mu_j| {row['pairwise']:6.1f}; "
              + ", ".join(f"{k} {row[k][0]:.4f} (sd {row[k][1]:.4f})" for k in ("standard", "matched", "empirical")),
              file=out, flush=True)
    return rows


def _errors(lp, x_T, exact, priors):
    """Mean |error| with each prior, from one run (the default prior swapped out)."""
    import diffaccel.sampling as S
    base = lp.double() - S.prior_logp(x_T, 80.0)
    return {name: float((base + p(x_T) - exact).abs().mean()) for name, p in priors.items()}


def likelihood_table(B=64, d=3072, nfes=(25, 50, 100, 200), tols=(1e-2, 1e-3, 1e-4, 1e-5),
                     backend="cpu", kdiffusion=True, repeats=3, out=None, mean_scale=2.0):
    """Rows {method, nfe, vjps_per_eval, seconds, err_standard, err_matched, err_empirical,
    err_exact}; the wall time is the median of ``repeats`` identical runs (same seeds: the same
    result), so a shared machine's load spikes do not land in the table."""
    import diffaccel.sampling as S
    gm, x, exact = gmm_problem(B, d, mean_scale=mean_scale)
    priors = _priors(gm)
    rows = []

    def add(method, nfe, vjps, seconds, lp, x_T):
        e = _errors(lp, x_T, exact, priors)
        rows.append({"method": method, "nfe": nfe, "vjps_per_eval": vjps / nfe, "seconds": seconds,
                     "err_standard": e["standard"], "err_matched": e["matched"],
                     "err_empirical": e["empirical"], "err_exact": e["exact"]})
        if out is not None:
            print(format_table(rows[-1:], header=len(rows) == 1), file=out, flush=True)

    def ours(method, **kw):
        (lp, info), sec = timed(lambda: S.log_likelihood(gm, x, 0.01, 80.0, seed=1, backend=backend, **kw),
                                repeat=repeats, warmup=0)
        add(method, info["nfe"], info.get("vjps", info["nfe"] * kw.get("probes", 1)), sec, lp, info["x_T"])

    kd = kdiffusion_log_likelihood() if kdiffusion else None
    if kd is not None:
        for tol in tols:
            last = {}

            def recorded(xx, sigma):
                # k-diffusion returns no latent: its last evaluation at sigma_max is the final
                # accepted dopri5 step's FSAL stage, at the returned x_T
                if float(sigma.reshape(-1)[0]) >= 80.0 * (1 - 1e-6):
                    last["x"] = xx.detach().clone()
                return gm(xx, sigma)
            def call():
                torch.manual_seed(1)  # its probe: torch.randint_like
                return kd(recorded, x.float(), 0.01, 80.0, atol=tol, rtol=tol)
            (lp, info), sec = timed(call, repeat=repeats, warmup=0)
            add(f"k-diffusion dopri5 {tol:g}", info["fevals"], info["fevals"], sec, lp, last["x"])
    for tol in tols:
        ours(f"dopri5 {tol:g}", solver="dopri5", atol=tol, rtol=tol)
    for nfe in nfes:
        ours(f"rk4 {nfe // 4} steps", solver="rk4", steps=max(1, nfe // 4))
    for nfe in nfes:
        ours(f"expint4 {nfe - 1} steps, 1 probe", solver="expint", steps=nfe - 1)
        ours(f"expint4 {nfe - 1} steps, 4 probes", solver="expint", steps=nfe - 1, probes=4)
        ours(f"expint4 {nfe - 1} steps, subspace CV", solver="expint", steps=nfe - 1,
             divergence="subspace")
    return rows


COLS = [Col("method", 38, align="<"), Col("NFE", 5, "d"), Col("vjp/eval", 8, ".2f"),
        Col("wall", 8, ".2f", suffix="s"), Col("err N(0,s2)", 11, ".4f"), Col("err matched", 11, ".4f"),
        Col("err empirical", 13, ".4f"), Col("err exact prior", 15, ".4f")]


def format_table(rows, header=True):
    return _table(COLS, [(r["method"], r["nfe"], r["vjps_per_eval"], r["seconds"], r["err_standard"],
                          r["err_matched"], r["err_empirical"], r["err_exact"]) for r in rows],
                  header=header)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--nfes", default=None, help="e.g. 25,50,100,200")
    p.add_argument("--tols", default=None, help="dopri5 tolerances, e.g. 1e-2,1e-3,1e-4,1e-5")
    p.add_argument("--repeats", type=int, default=3, help="wall time: the median of this many runs")
    p.add_argument("--mean-scale", type=float, default=2.0, help="the mixture's means: this x randn")
    p.add_argument("--prior-only", action="store_true", help="only each prior's own error, per mean scale")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    kw = dict(B=8, d=64, nfes=(25, 50), tols=(1e-3,)) if a.quick else {}
    if a.nfes:
        kw["nfes"] = tuple(int(n) for n in a.nfes.split(","))
    if a.tols:
        kw["tols"] = tuple(float(t) for t in a.tols.split(","))
    if a.prior_only:
        prior_errors(d=64 if a.quick else 3072, n=512 if a.quick else 8192)
        return
    print(f"log_likelihood, 4-component GM (means {a.mean_scale:g} randn), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, backend {a.backend}; wall: {statistic(a.repeats, 0)}")
    likelihood_table(backend=a.backend, repeats=a.repeats, out=sys.stdout, mean_scale=a.mean_scale, **kw)


if __name__ == "__main__":
    main()
