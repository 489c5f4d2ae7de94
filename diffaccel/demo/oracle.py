"""The demo's backend checks on exact answers (no trained network): the fused stroke noising on
every backend against the bit-exact reference (:func:`main`), and likelihood-tracked sampling and
``log_likelihood`` on an exact Gaussian mixture against its exact log p (:func:`sampling`).
Both print one line per backend and return their rows for the report.
"""
import torch

import diffaccel
from diffaccel.backends import BACKENDS, availability
from diffaccel.bench import timed


def _runnable(device, op):
    """The backends that can run ``op`` on ``device``; prints a line for each that cannot."""
    for name in BACKENDS:
        ok, why = availability(name, device, op)
        if ok:
            yield name
        else:
            print(f"  {name:9s} skipped: {why}")


def stroke_check(device, size=64, batch=16, channels=4):
    """Rows (backend, ms, max |difference from reference|) of one stroke_noise call (timed once
    after one warm-up call)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, channels, size, size, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    abar = torch.cos(t * torch.pi / 2) ** 2  # cosine schedule
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    logsnr = torch.log(abar / (1 - abar)).clamp(-20, 20)
    scales = (2, 4, 8)
    w = diffaccel.stroke_weights(logsnr, scales)
    seeds = torch.arange(batch, device=device) + 1000
    kw = dict(scales=scales, data_weights=w, noise_weights=w, seed=seeds, target="v")
    ref = diffaccel.stroke_noise(x0, alpha, sigma, backend="reference", **kw)
    print(f"\nstroke_noise  B={batch} C={channels} {size}x{size} scales={scales} on {device}:")
    rows = []
    for name in _runnable(device, "stroke_noise"):
        out, sec = timed(lambda: diffaccel.stroke_noise(x0, alpha, sigma, backend=name, **kw), device,
                         repeat=1, warmup=1)
        ms = sec * 1e3
        err = max((a - b).abs().max().item() for a, b in zip(out, ref))
        print(f"  {name:9s} {ms:9.2f} ms   max |difference from reference| = {err:.2e}")
        rows.append((name, ms, err))
    return rows


def _mixture(d, g):
    from diffaccel.models import GaussianMixture
    return GaussianMixture(torch.randn(4, d, generator=g, dtype=torch.float64) * 2,
                           torch.rand(4, generator=g) + 0.5, torch.rand(4, generator=g) * 0.5 + 0.3)


def sampling(device, d=3072, d_sde=64, batch=16, steps=400):
    """Euler-Maruyama with logp (a d_sde-dimensional 4-component mixture: the tracked
    log-density's error is first order, about proportional to d / steps) and log_likelihood
    (d dimensions), against the exact log p."""
    import diffaccel.sampling as S
    from diffaccel import schedules

    g = torch.Generator().manual_seed(0)
    gm, sde = _mixture(d, g), _mixture(d_sde, g)
    sigmas = schedules.karras_sigmas(steps, 0.05, 80.0, append_zero=False)
    x_T = (sde.sample(batch, generator=g) + 80.0 * torch.randn(batch, d_sde, generator=g)).float().to(device)
    data = gm.sample(batch, generator=g).float().to(device)
    print(f"\n4-component Gaussian mixtures, B={batch}, exact log p as the check, on {device}:")
    rows = []
    for name in _runnable(device, "sample_step"):
        (x, lp), t_em = timed(lambda: S.sample_euler_maruyama(
            sde, x_T, sigmas, logp=sde.log_prob(x_T, 80.0), seed=1, disable=True, backend=name),
            device, repeat=1, warmup=0)
        em = (lp - sde.log_prob(x, 0.05)).abs().mean().item()
        (ll, info), t_ll = timed(lambda: S.log_likelihood(gm, data, 0.01, 80.0, solver="dopri5", seed=1,
                                                          backend=name), device, repeat=1, warmup=0)
        err = (ll - gm.log_prob(data, 0.01)).abs().mean().item()
        print(f"  {name:9s} Euler-Maruyama + logp, D={d_sde}, {steps} steps: {t_em:5.2f} s, mean "
              f"|logp - exact| {em:5.2f} nats;  log_likelihood dopri5, D={d}: {t_ll:5.2f} s, "
              f"{info['nfe']} evaluations, mean |error| {err:4.2f} nats")
        rows.append((name, t_em, em, t_ll, info["nfe"], err))
    return rows
