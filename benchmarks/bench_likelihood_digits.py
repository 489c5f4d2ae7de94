"""Likelihood solvers on a real network: a small diffusers ``UNet2DModel`` (EDM preconditioning)
trained for about a minute on scikit-learn's ``load_digits`` (8x8, 17 grey levels, uniformly
dequantized and mapped to [-1, 1]), evaluated on held-out digits.

    python benchmarks/bench_likelihood_digits.py [--train-seconds 60] [--B 32] [--ref-steps 999]
        [--ref-probes 64] [--nfes 25,50,100,200] [--threads 1]

The reference is ``expint`` (order 4) with ``--ref-steps`` + 1 evaluations (default 1000) and 64
probes; every row's error is its mean |log p - reference| over the held-out batch (the
reference's own Hutchinson standard error is printed). Held-out bits per dimension are the
reference's, in 8-bit-free units of the 17-level pixels (``pixel_scale = 17 / 2``), with the
standard prior and with the matched prior (moments of the training set).

Functions: :func:`digits`, :func:`train`, :func:`edm_denoiser`, :func:`table`.
"""
import argparse
import math
import sys
import time

import torch

SIGMA_DATA = 0.5


def digits(seed=0):
    """(train, held-out) tensors (N, 1, 8, 8) in [-1, 1], uniformly dequantized."""
    from sklearn.datasets import load_digits
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor(load_digits().images, dtype=torch.float32)  # 0..16
    v = v[torch.randperm(len(v), generator=g)]
    x = (v + torch.rand(v.shape, generator=g)) / 17 * 2 - 1
    x = x[:, None]
    return x[:-256], x[-256:]


def edm_denoiser(net):
    """Dn(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4) (Karras et al. 2022)."""
    def model(x, sigma, **kw):
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_skip = SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / torch.sqrt(s ** 2 + SIGMA_DATA ** 2)
        c_in = 1 / torch.sqrt(s ** 2 + SIGMA_DATA ** 2)
        return c_skip * x + c_out * net(c_in * x, torch.log(sigma.to(x.dtype)) / 4).sample
    return model


def train(x, seconds=60.0, seed=0, batch=128):
    """A small UNet2DModel trained with the EDM loss (log-normal sigma) for ``seconds``."""
    from diffusers import UNet2DModel
    torch.manual_seed(seed)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                      layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    model = edm_denoiser(net)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        xb = x[torch.randint(0, len(x), (batch,))]
        sigma = torch.exp(torch.randn(batch) * 1.2 - 1.2)
        w = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
        den = model(xb + sigma[:, None, None, None] * torch.randn_like(xb), sigma)
        loss = (w[:, None, None, None] * (den - xb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return model, it, float(loss.detach())


def table(model, x, x_train, ref_steps=999, ref_probes=64, nfes=(25, 50, 100, 200), backend="cpu",
          out=sys.stdout):
    import diffaccel.sampling as S
    smin, smax = 0.01, 80.0
    D = x[0].numel()
    matched = S.MatchedPrior.from_data(x_train)
    t0 = time.perf_counter()
    ref, ri = S.log_likelihood(model, x, smin, smax, solver="expint", steps=ref_steps, probes=ref_probes,
                               seed=12345, backend=backend)
    ref_m = ref - S.prior_logp(ri["x_T"], smax) + matched(ri["x_T"], smax)
    bpd = S.bits_per_dim(ref, D, pixel_scale=17 / 2)
    bpd_m = S.bits_per_dim(ref_m, D, pixel_scale=17 / 2)
    print(f"reference: expint4 {ri['nfe']} evaluations x {ref_probes} probes, "
          f"{time.perf_counter() - t0:.0f} s; its standard error: mean {float(ri['stderr'].mean()):.3f} nats, "
          f"max {float(ri['stderr'].max()):.3f}", file=out)
    print(f"held-out bits/dim (17-level pixels): {float(bpd.mean()):.4f} with N(0, 80^2 I), "
          f"{float(bpd_m.mean()):.4f} with the matched prior (D = {D}, B = {len(x)})", file=out)
    print(f"{'method':38s} {'NFE':>5s} {'vjp/eval':>8s} {'wall':>8s} {'mean |err|':>10s} {'mean err':>9s}",
          file=out, flush=True)
    rows = []

    def run(method, **kw):
        t0 = time.perf_counter()
        lp, info = S.log_likelihood(model, x, smin, smax, seed=7, backend=backend, **kw)
        dt = time.perf_counter() - t0
        e = (lp - ref).double()
        vj = info.get("vjps", info["nfe"] * kw.get("probes", 1))
        rows.append({"method": method, "nfe": info["nfe"], "vjps_per_eval": vj / info["nfe"],
                     "seconds": dt, "mae": float(e.abs().mean()), "bias": float(e.mean())})
        r = rows[-1]
        print(f"{method:38s} {r['nfe']:5d} {r['vjps_per_eval']:8.2f} {dt:7.2f}s {r['mae']:10.4f} "
              f"{r['bias']:9.4f}", file=out, flush=True)

    run("dopri5 1e-3", solver="dopri5", atol=1e-3, rtol=1e-3)
    for nfe in nfes:
        run(f"rk4 {nfe // 4} steps", solver="rk4", steps=nfe // 4)
    for nfe in nfes:
        run(f"expint4 {nfe - 1} steps, 1 probe", solver="expint", steps=nfe - 1)
        run(f"expint4 {nfe - 1} steps, 4 probes", solver="expint", steps=nfe - 1, probes=4)
        run(f"expint4 {nfe - 1} steps, subspace CV", solver="expint", steps=nfe - 1, divergence="subspace")
        if nfe == max(nfes):
            run(f"expint4 {nfe - 1} steps, subspace CV all sigma", solver="expint", steps=nfe - 1,
                divergence="subspace", cv_sigma=0.0)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-seconds", type=float, default=60.0)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--ref-steps", type=int, default=999)
    p.add_argument("--ref-probes", type=int, default=64)
    p.add_argument("--nfes", default="25,50,100,200")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    xtr, xte = digits()
    model, it, loss = train(xtr, a.train_seconds)
    print(f"UNet2DModel trained {a.train_seconds:.0f} s ({it} Adam steps, last loss {loss:.3f}) on "
          f"{len(xtr)} digits; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    table(model, xte[:a.B], xtr, a.ref_steps, a.ref_probes, tuple(int(n) for n in a.nfes.split(",")))


if __name__ == "__main__":
    main()
