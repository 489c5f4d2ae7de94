"""Schedules (docs/math.md Sections 0 and 4): closed forms, conversions, and the sigmas tensors."""
import math

import pytest
import torch

import diffaccel.schedules as sch
from support import assert_close


def test_conversions_round_trip(rng):
    abar = torch.rand(50, generator=rng, dtype=torch.float64) * 0.98 + 0.01
    sigma = sch.abar_to_sigma(abar)
    assert_close(sch.sigma_to_abar(sigma), abar, atol=1e-14, what="abar")
    lam = sch.abar_to_logsnr(abar)
    assert_close(sch.logsnr_to_abar(lam), abar, atol=1e-14, what="abar from logsnr")
    assert_close(sch.sigma_to_logsnr(sigma), lam, atol=1e-12, what="logsnr from sigma")
    assert_close(sch.logsnr_to_sigma(lam), sigma, atol=1e-12, rtol=1e-12, what="sigma from logsnr")
    # definitions: sigma = b/a with a^2 = abar, b^2 = 1 - abar; lambda = log(a^2/b^2)
    assert_close(sigma, torch.sqrt(1 - abar) / torch.sqrt(abar), atol=1e-12, rtol=1e-12, what="sigma")
    assert_close(lam, torch.log(abar / (1 - abar)), atol=1e-12, what="logsnr")


def test_vp_linear_continuous_and_discrete():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    abar = sch.vp_linear_abar(t)
    # d log abar / dt = -beta(t)
    h = 1e-6
    deriv = (torch.log(sch.vp_linear_abar(t[1:-1] + h)) - torch.log(sch.vp_linear_abar(t[1:-1] - h))) / (2 * h)
    assert_close(deriv, -sch.vp_linear_beta(t[1:-1]), atol=1e-5, what="dlog abar/dt")
    assert_close(sch.vp_linear_t(abar), t, atol=1e-10, what="t from abar")
    # the DDPM table is the discrete version of beta_min = 0.1, beta_max = 20 (N = 1000)
    table = sch.ddpm_abar()
    assert table.shape == (1000,)
    assert_close(table[0], torch.tensor(1 - 1e-4, dtype=torch.float64), atol=1e-15, what="abar_0")
    cont = sch.vp_linear_abar(torch.arange(1, 1001, dtype=torch.float64) / 1000)
    assert_close(table, cont, atol=2e-3, rtol=0.02, what="DDPM vs continuous VP")
    assert bool((table[1:] < table[:-1]).all())


def test_cosine():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    abar = sch.cosine_abar(t)
    assert abs(float(abar[0]) - 1) < 1e-12 and float(abar[-1]) < 1e-8
    s = 0.008
    want = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    assert_close(abar, want, atol=1e-14, what="cosine abar")


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_karras(n):
    s = sch.karras_sigmas(n, 0.002, 80.0, dtype=torch.float64)
    assert s.shape == (n + 1,) and float(s[-1]) == 0.0
    assert abs(float(s[0]) - (80.0 if n > 1 else 80.0)) < 1e-9
    if n > 1:
        assert abs(float(s[n - 1]) - 0.002) < 1e-12
        i = torch.arange(n, dtype=torch.float64)
        want = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        assert_close(s[:-1], want, atol=1e-12, rtol=1e-12, what="karras")
        assert bool((s[1:] < s[:-1]).all())


def test_logsnr_and_ve_are_uniform_in_log_sigma():
    s = sch.logsnr_sigmas(9, 0.01, 100.0, append_zero=False, dtype=torch.float64)
    lam = sch.sigma_to_logsnr(s)
    assert_close(lam[1:] - lam[:-1], torch.full((8,), (lam[-1] - lam[0]).item() / 8, dtype=torch.float64),
                 atol=1e-12, what="logsnr steps")
    assert_close(sch.ve_sigmas(9, 0.01, 100.0, append_zero=False, dtype=torch.float64), s, atol=1e-12,
                 what="VE")


def test_sigmas_of_vp_schedules_are_decreasing():
    for s in (sch.vp_linear_sigmas(20), sch.ddpm_sigmas(20), sch.cosine_sigmas(20)):
        assert s.dtype == torch.float32 and s.shape == (21,) and float(s[-1]) == 0
        assert bool((s[1:] < s[:-1]).all())
    # ddpm_sigmas hits the table's first and last entries
    table = sch.abar_to_sigma(sch.ddpm_abar())
    s = sch.ddpm_sigmas(5, dtype=torch.float64)
    assert_close(s[[0, 4]], table[[999, 0]], atol=1e-12, what="DDPM ends")


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_interpolant_knee(kind):
    d, k = 3000, 5.0
    kk = k / math.sqrt(d)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    tau = sch.interpolant_tau(t, d, k, kind)
    if kind == "vp":
        want = [0.0, kk / 2, kk, kk + (1 - kk) / 2, 1.0]
    else:
        want = [0.0, (1 - kk) / 2, 1 - kk, 1 - kk + kk / 2, 1.0]
    assert_close(tau, torch.tensor(want, dtype=torch.float64), atol=1e-12, what="tau(t)")
    assert_close(sch.interpolant_tau(t, d, None, kind), t, atol=0, what="constant speed")
    a, b = sch.interpolant_coefficients(tau, d, kind)
    if kind == "vp":
        assert_close(a ** 2 + b ** 2, torch.ones(5, dtype=torch.float64), atol=1e-12, what="VP")
    else:
        assert_close(b, math.sqrt(d) * (1 - tau), atol=1e-12, what="VE")
    s = sch.interpolant_sigmas(10, d, k, kind)
    assert s.shape == (11,) and float(s[-1]) == 0 and bool((s[1:] < s[:-1]).all())


def test_bad_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="n"):
        sch.karras_sigmas(0, 0.1, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        sch.karras_sigmas(5, 1.0, 0.1)
    with pytest.raises(ValueError, match="kind"):
        sch.interpolant_tau(0.5, 100, 5.0, "edm")
    with pytest.raises(ValueError, match="k"):
        sch.interpolant_tau(0.5, 16, 5.0)
