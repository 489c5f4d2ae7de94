"""Bad input and edge cases of the samplers, log_likelihood, the models and the ops (issue 8):
one non-finite sample never sinks the batch, empty batches, noise levels checked, float64 under
``auto``, and the seed policy (seeds are taken modulo 2^64)."""
import math
import warnings

import pytest
import torch

import diffaccel
import diffaccel.sampling as S
import diffaccel.schedules as sch
from support import assert_close
from diffaccel import _ext, _validate
from diffaccel.models import CurieWeiss, GaussianMixture

HAVE_EXT = _ext.load() is not None
FAST = ["reference"] + (["cpu"] if HAVE_EXT else [])


def _gm(rng, D=6, K=3):
    means = torch.randn(K, D, generator=rng, dtype=torch.float64) * 1.5
    return GaussianMixture(means, torch.rand(K, generator=rng) + 0.5,
                           torch.rand(K, generator=rng) * 0.5 + 0.3)


class Poisoned:
    """The mixture's denoiser, except that it returns ``value`` for the rows in ``rows`` whenever
    their sigma is below ``below`` (so the samples go bad mid-solve, not at the start)."""

    def __init__(self, gm, rows, below, value=float("nan")):
        self.gm, self.rows, self.below, self.value = gm, torch.as_tensor(rows), below, value

    def __call__(self, x, sigma, **kw):
        out = self.gm(x, sigma)
        hit = torch.zeros(x.shape[0], dtype=torch.bool)
        hit[self.rows.long()] = True
        hit &= torch.as_tensor(sigma).reshape(-1).expand(x.shape[0]) < self.below
        return torch.where(hit.reshape(-1, *[1] * (x.dim() - 1)), self.value, out)


def _run_checked(fn, n_bad, B):
    """Run fn; exactly one RuntimeWarning naming ``n_bad of B`` when n_bad > 0, none otherwise."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = fn()
    msgs = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    if n_bad:
        assert len(msgs) == 1 and f"{n_bad} of {B} samples are non-finite" in msgs[0], msgs
    else:
        assert not msgs, msgs
    return out


def _check_rows(got, want, bad, good, what, exact):
    """Bad rows NaN; good rows as in the run without the bad ones."""
    got = got.detach()
    assert bool(torch.isnan(got[bad]).all()), f"{what}: bad rows not NaN: {got[bad]}"
    if exact:
        assert torch.equal(got[good], want), f"{what}: good rows differ from the run without the bad ones"
    else:
        assert_close(got[good], want, atol=1e-9, rtol=1e-9, what=what)


# ------------------------------------------------------------- item 1: one bad sample

SOLVERS = [("euler", 6), ("heun", 4), ("rk4", 3), ("dopri5", None)]


@pytest.mark.parametrize("solver,steps", SOLVERS, ids=[s for s, _ in SOLVERS])
def test_log_likelihood_bad_rows_do_not_sink_the_batch(solver, steps, rng):
    """A NaN input row and two rows the model poisons mid-solve come back NaN with one warning;
    the others exactly as without them (per-sample seeds: each row's probes do not depend on
    the batch). float32 on the fastest backend here (bitwise: the model's float64 rounding does
    not reach float32 in practice)."""
    B, D = 6, 5
    gm = _gm(rng, D)
    seeds = torch.randint(0, 2 ** 62, (B,), generator=rng)
    x = gm.sample(B, generator=rng).float()
    x[1, 2] = float("nan")
    model = Poisoned(gm, [0, 4], below=1.0, value=float("inf") if solver == "rk4" else float("nan"))
    bad, good = torch.tensor([0, 1, 4]), torch.tensor([2, 3, 5])
    kw = dict(steps=steps, solver=solver, probes=2, backend=FAST[-1], atol=1e-3, rtol=1e-3)
    lp, info = _run_checked(lambda: S.log_likelihood(model, x, 0.05, 20.0, seed=seeds, **kw), 3, B)
    lp_g, info_g = _run_checked(lambda: S.log_likelihood(gm, x[good], 0.05, 20.0, seed=seeds[good],
                                                         **kw), 0, 3)
    for what, g, w in (("logp", lp, lp_g), ("x_T", info["x_T"], info_g["x_T"]),
                       ("delta", info["delta"], info_g["delta"]), ("stderr", info["stderr"], info_g["stderr"])):
        _check_rows(g, w, bad, good, f"{solver} {what}", exact=True)


@pytest.mark.parametrize("backend", FAST[-1:])
def test_dopri5_rows_are_independent_of_their_batch(backend, rng):
    """Each sample's dopri5 result (log p, x_T, accepted levels) equals that of the sample run
    alone: step sizes are per sample. Bitwise on the float32 C++ path; to float64 rounding on
    the reference (the model's float64 matmuls round differently for other batch sizes)."""
    B, D = 3, 5
    gm = _gm(rng, D)
    x = gm.sample(B, generator=rng)
    if backend == "cpu":
        x = x.float()
    seeds = torch.randint(0, 2 ** 62, (B,), generator=rng)
    kw = dict(solver="dopri5", probes=2, backend=backend, atol=1e-3, rtol=1e-3)
    lp, info = S.log_likelihood(gm, x, 0.05, 20.0, seed=seeds, **kw)
    for b in range(B):
        lb, ib = S.log_likelihood(gm, x[b:b + 1], 0.05, 20.0, seed=seeds[b:b + 1], **kw)
        assert int(ib["steps"][0]) == int(info["steps"][b])
        if backend == "cpu":
            assert torch.equal(lb, lp[b:b + 1]) and torch.equal(ib["x_T"], info["x_T"][b:b + 1])
            assert torch.equal(ib["sigmas"][0], info["sigmas"][b])
        else:
            assert_close(lb, lp[b:b + 1], atol=1e-9, rtol=1e-12, what=f"logp of sample {b}")
            assert_close(ib["sigmas"][0], info["sigmas"][b], atol=0, rtol=1e-12, what=f"levels of {b}")


def _samplers(sig, sig_pos, taus, seeds):
    return [
        ("euler", lambda m, x, s: S.sample_euler(m, x, sig, logp=True, probes=2, seed=s)),
        ("heun", lambda m, x, s: S.sample_heun(m, x, sig, logp=True, probes=2, seed=s)),
        ("hd", lambda m, x, s: S.sample_hd(m, x, sig, sigma_switch=1.0, logp=True, seed=s)),
        ("hd-sde", lambda m, x, s: S.sample_hd(m, x, sig, sigma_switch=1.0, first="sde", seed=s)),
        ("ddim", lambda m, x, s: S.sample_ddim(m, x, sig_pos, eta=0.5, logp=True, seed=s)),
        ("ddim-nologp", lambda m, x, s: S.sample_ddim(m, x, sig, eta=0.5, seed=s)),
        ("euler_maruyama", lambda m, x, s: S.sample_euler_maruyama(m, x, sig_pos, logp=True, seed=s)),
        ("interpolant", lambda m, x, s: S.sample_interpolant(m, x, taus)),
        # k-diffusion's samplers (in-kernel noise from per-sample seeds)
        *[(name, lambda m, x, s, f=getattr(S, f"sample_{name}"): f(m, x, sig, seed=s, logp=True))
          for name in ("dpm_2", "lms", "dpmpp_2m", "euler_ancestral", "dpm_2_ancestral",
                       "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde")],
    ]


@pytest.mark.parametrize("backend", FAST)
def test_samplers_bad_rows_do_not_sink_the_batch(backend, rng):
    """Every sampler: a NaN and an inf input row, and rows the model poisons mid-solve (NaN,
    inf), come back NaN with one warning; the others exactly as in the run without them."""
    B, D = 7, 6
    gm = _gm(rng, D)
    sig = sch.karras_sigmas(5, 0.1, 20.0)
    seeds = torch.randint(0, 2 ** 62, (B,), generator=rng)
    taus = torch.linspace(0.05, 0.95, 5)
    x = gm.sample(B, generator=rng).float() + 3.0 * torch.randn(B, D, generator=rng)
    x[1, 2], x[3, 0] = float("nan"), float("inf")
    model = Poisoned(Poisoned(gm, [0], below=2.0), [4], below=1.0, value=float("inf"))
    bad, good = torch.tensor([0, 1, 3, 4]), torch.tensor([2, 5, 6])
    # the same model path without poison (the interpolant calls a plain denoiser at x / a, the
    # mixture's posterior_mean otherwise)
    clean = Poisoned(gm, [], 0.0)
    with diffaccel.use_backend(backend):
        for sname, run in _samplers(sig, sig[:-1], taus, seeds):
            out = _run_checked(lambda: run(model, x, seeds), len(bad), B)
            want = _run_checked(lambda: run(clean, x[good], seeds[good]), 0, len(good))
            out, want = (out, want) if isinstance(out, tuple) else ((out,), (want,))
            for what, g, w in zip(("x", "logp"), out, want):
                _check_rows(g, w, bad, good, f"{sname} {what}", exact=True)


# ----------------------------------------------------------------- item 3: empty batch

def test_empty_batch_gives_empty_results(rng):
    gm = _gm(rng, 4)
    x = torch.zeros(0, 4)
    sig = sch.karras_sigmas(4, 0.1, 5.0)
    for run in _samplers(sig, sig[:-1], torch.linspace(0.1, 0.9, 4), 0):
        out = run[1](gm, x, 0)
        for t in (out if isinstance(out, tuple) else (out,)):
            assert t.shape[0] == 0, run[0]
    for solver, steps in SOLVERS:
        lp, info = S.log_likelihood(gm, x, 0.1, 5.0, steps=steps, solver=solver, probes=2, seed=0)
        assert lp.shape == (0,) and lp.dtype == torch.float64
        for k in ("stderr", "delta"):
            assert info[k].shape == (0,), (solver, k)
        assert info["x_T"].shape == (0, 4) and info["nfe"] == 0
        if solver == "dopri5":
            assert info["steps"].shape == (0,) and info["sigmas"] == [] and info["errors"] == []


# ------------------------------------------------------------ item 4: noise levels checked

@pytest.mark.parametrize("bad,match", [
    ([5.0, float("nan"), 0.1, 0.0], "sigmas: expected finite"),
    ([0.1, 1.0, 5.0, 0.0], "sigmas: expected strictly decreasing"),
    ([5.0, 1.0, 1.0, 0.0], "sigmas: expected strictly decreasing"),
    ([5.0, 1.0, 0.0, -0.1], "sigmas: expected noise levels >= 0"),
    ([5.0, math.inf, 0.0], "sigmas: expected finite"),
])
def test_samplers_refuse_bad_noise_levels(bad, match, rng):
    gm = _gm(rng, 4)
    x = torch.randn(2, 4, generator=rng)
    for name, run in _samplers(torch.tensor(bad), torch.tensor(bad), None, 0):
        if name == "interpolant":
            continue
        with pytest.raises(ValueError, match=match):
            run(gm, x, 0)


def test_noise_arguments_are_checked(rng):
    gm = _gm(rng, 4)
    x = torch.randn(3, 4, generator=rng)
    for sigma, match in ((float("nan"), "sigma: expected finite"), (-1.0, "sigma: expected values >= 0"),
                         (torch.tensor([1.0, math.inf, 1.0]), "sigma: expected finite")):
        for call in (gm, gm.denoise, gm.score, gm.log_prob):
            with pytest.raises(ValueError, match=match):
                call(x, sigma)
    with pytest.raises(ValueError, match="b: expected finite"):
        gm.posterior_mean(x, 1.0, float("nan"))
    with pytest.raises(ValueError, match="a: expected finite"):
        gm.posterior_mean(x, float("inf"), 1.0)
    cw = CurieWeiss(4, 1.2)
    for sigma, match in ((0.0, "sigma: expected values > 0"), (float("nan"), "sigma: expected finite")):
        with pytest.raises(ValueError, match=match):
            cw(x, sigma)
    with pytest.raises(ValueError, match="taus"):
        S.sample_interpolant(gm, x, [0.1, float("nan"), 0.9])
    with pytest.raises(ValueError, match="taus"):
        S.sample_interpolant(gm, x, [0.5, 0.2, 0.9])
    x0 = torch.randn(2, 3, 8, 8, generator=rng)
    for b in FAST:
        with pytest.raises(ValueError, match="sigma: expected values >= 0"):
            diffaccel.stroke_noise(x0, 1.0, torch.tensor([0.5, -1e-3]), scales=(2,), data_weights=[0.1],
                                   noise_weights=[0.1], seed=0, backend=b)


def test_value_checks_are_skipped_while_a_cuda_stream_captures(monkeypatch, rng):
    """No host read during CUDA graph capture: eager() is False then, and the checks that read
    values are skipped (simulated: this machine may have no GPU)."""
    assert _validate.eager()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not _validate.eager()
    gm = _gm(rng, 4)
    gm(torch.randn(2, 4, generator=rng), -1.0)  # unchecked: no raise
    # (a sampler that keeps its noise levels on the device; the k-diffusion samplers take them
    # as host numbers before the loop, where checking them reads nothing from the device)
    S.sample_euler_maruyama(gm, torch.randn(2, 4, generator=rng), torch.tensor([0.1, 1.0, 2.0]), seed=0)


def test_compiled_checks_have_no_graph_break(rng):
    """Under torch.compile(fullgraph=True) the value checks are left out (no host sync, which
    would break the graph), so code calling the denoiser compiles as one graph."""
    gm = _gm(rng, 4)
    f = torch.compile(lambda x, s: gm(x, s), fullgraph=True, backend="eager")
    x = torch.randn(3, 4, generator=rng)
    assert_close(f(x, torch.full((3,), 0.7)), gm(x, 0.7), atol=1e-6, what="compiled denoiser")


# ------------------------------------------------------------- item 5: float64 under auto

def test_float64_runs_on_the_reference_under_auto(monkeypatch, rng):
    monkeypatch.delenv("DIFFACCEL_BACKEND", raising=False)
    x = torch.randn(2, 3, 8, 8, generator=rng, dtype=torch.float64)
    w = torch.full((2, 1), 0.2, dtype=torch.float64)
    kw = dict(scales=(2,), data_weights=w, noise_weights=w, seed=3, target="v")
    got = diffaccel.stroke_noise(x, 0.8, 0.6, **kw)
    want = diffaccel.stroke_noise(x, 0.8, 0.6, backend="reference", **kw)
    assert got[0].dtype == torch.float64 and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(diffaccel.stroke_blur(x, w, (2,)), diffaccel.stroke_blur(x, w, (2,), backend="reference"))
    xs = torch.randn(4, 3, generator=rng, dtype=torch.float64)
    out = S.fused_step(xs.clone(), [xs * 0.5], S.make_coef(4, ax=0.5, am=(1.0,)))
    assert_close(out, xs, atol=1e-15, what="float64 fused step under auto")
    if HAVE_EXT:
        for call in (lambda: diffaccel.stroke_noise(x, 0.8, 0.6, backend="cpu", **kw),
                     lambda: diffaccel.stroke_blur(x, w, (2,), backend="cpu"),
                     lambda: S.fused_step(xs.clone(), [xs], S.make_coef(4, am=(1.0,)), backend="cpu")):
            with pytest.raises(TypeError, match="float64 is supported by the reference backend only"):
                call()
        with diffaccel.use_backend("cpu"):
            with pytest.raises(TypeError, match="float64 is supported by the reference backend only"):
                diffaccel.stroke_blur(x, w, (2,))


# ---------------------------------------------------------- item 6: seeds modulo 2^64

@pytest.mark.parametrize("backend", FAST)
def test_seeds_are_taken_modulo_2_64(backend, rng):
    """seed s and s + k 2^64 give the same stream; -1 is 2^64 - 1; an int64 tensor's value is
    read as its two's-complement bits. The same in noise, the ops, stroke_noise and the samplers."""
    shape = (3, 5)
    base = diffaccel.noise(shape, seed=2 ** 64 - 1, backend=backend)
    for s in (-1, 2 ** 65 - 1, -(2 ** 64) - 1, torch.tensor([-1]), torch.tensor(-1)):
        assert torch.equal(diffaccel.noise(shape, seed=s, backend=backend), base), s
    assert not torch.equal(diffaccel.noise(shape, seed=1, backend=backend), base)
    s = -12345
    assert torch.equal(diffaccel.noise(shape, seed=s, backend=backend),
                       diffaccel.noise(shape, seed=s % 2 ** 64, backend=backend))
    if backend == "cpu":  # the raw op reads int64 seeds as their bits
        op = torch.ops.diffaccel.noise(torch.tensor([-1]), list(shape), 0, 0, torch.float32)
        assert torch.equal(op, base)
    x0 = torch.randn(2, 3, 4, 4, generator=rng)
    w = torch.full((2, 1), 0.1)
    kw = dict(scales=(2,), data_weights=w, noise_weights=w, backend=backend)
    assert torch.equal(diffaccel.stroke_noise(x0, 1.0, 0.5, seed=-7, **kw)[0],
                       diffaccel.stroke_noise(x0, 1.0, 0.5, seed=2 ** 64 - 7, **kw)[0])
    gm = _gm(rng, 4)
    x = torch.randn(2, 4, generator=rng) * 5
    sig = sch.karras_sigmas(3, 0.1, 5.0, append_zero=False)
    a = S.sample_euler_maruyama(gm, x, sig, seed=-3, logp=True, backend=backend)
    b = S.sample_euler_maruyama(gm, x, sig, seed=2 ** 64 - 3, logp=True, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    a = S.sample_heun(gm, x, sig, seed=-(2 ** 63), logp=True, backend=backend)
    b = S.sample_heun(gm, x, sig, seed=2 ** 63, logp=True, backend=backend)
    assert torch.equal(a[1], b[1])
