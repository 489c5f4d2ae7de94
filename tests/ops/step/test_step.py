"""The fused sampler step (docs/math.md Section 3.1): every backend against the PyTorch reference
on fresh random inputs with odd sizes, the op contracts (opcheck, torch.compile), and named
errors; then the same for its optional y line (a second linear combination, clamped, written
beside the step and fed into it in the same pass): the reference against the formula written out
in float64, the plain step left unchanged, NaN confinement and empty batches."""
import functools

import pytest
import torch

from support import LAW_MAX, assert_close, assert_close_to_truth, backend_params, draw_atol, to_float64
from diffaccel.layout import (COEF_AX, COEF_AZ, COEF_C0, COEF_C1, COEF_C2, COEF_C3, COEF_SX, DISTS,
                              NO_INCREMENT, NORMAL, RADEMACHER, Y_AY, Y_BX, Y_CN, Y_CZ, Y_SY, coef_am,
                              coef_cw, coef_sm, coef_width, y_bm, y_width)
from diffaccel.library import op
from diffaccel.reference import step as ref
from diffaccel.sampling import fused_step, make_coef, make_ycoef

BACKENDS = backend_params("sample_step")
RUNNABLE = [p.values[0] for p in BACKENDS if not p.marks]


def _inputs(rng, B, S, K, P, dtype, device="cpu", ycoef=False):
    def r(*shape):
        return torch.randn(*shape, generator=rng).to(dtype=dtype, device=device)

    inp = dict(x=r(B, *S), models=[r(B, *S) for _ in range(K)],
               coef=torch.randn(B, coef_width(K), generator=rng).to(device))
    if ycoef:
        inp["ycoef"] = torch.randn(B, y_width(K), generator=rng).to(device)
    inp.update(probes=r(P, B, *S) if P else None, vjps=[r(P, B, *S) for _ in range(K)] if P else None)
    return inp


def _run(backend, inp, *, seed, dist, z=None, track=True, P_out=0, probe_dist="rademacher",
         out=False, logp_dtype=torch.float64):
    x = inp["x"].clone()
    B = x.shape[0]
    lp = torch.linspace(-3, 3, B, dtype=logp_dtype, device=x.device) if track else None
    lv = torch.full((B,), 0.25, dtype=logp_dtype, device=x.device) if track else None
    po = torch.full((P_out, *x.shape), 7.0, dtype=x.dtype, device=x.device) if P_out else None
    if isinstance(seed, torch.Tensor):
        seed = seed.to(x.device)
    if z is not None:
        z = z.to(x.device)
    o = torch.full_like(x, 9.0) if out else None
    res = fused_step(x, inp["models"], inp["coef"], logp=lp, logp_var=lv, z=z, seed=seed,
                     offset=13, dist=dist, probes=inp["probes"], vjps=inp["vjps"], probes_out=po,
                     probe_offset=101, probe_dist=probe_dist, out=o, backend=backend)
    if out:
        assert res is o
        assert torch.equal(x, inp["x"]), "out=: x must be left unchanged"
    else:
        assert res is x
    return res, lp, lv, po


def _truth(run, inp, **kw):
    """``run`` on the reference with the same inputs in float64 (z too, logp accumulated in float64)."""
    if kw.get("z") is not None:
        kw["z"] = kw["z"].double()
    if "logp_dtype" in kw:
        kw["logp_dtype"] = torch.float64
    return run("reference", to_float64(inp), **kw)


def _floor(truth, inp, z=None, dist=None, **_):
    """The absolute floor of assert_close_to_truth for x_new and y_out: 4 float32 ulps of the
    largest value (the float32 terms may be added in another order), plus, when the increment is
    drawn in the kernel, az times how far the draws of that law may differ between libraries."""
    floor = 4 * torch.finfo(torch.float32).eps * float(truth.abs().max()) if truth.numel() else 0.0
    if z is None and dist is not None:
        floor += draw_atol(dist, LAW_MAX[dist]) * float(inp["coef"][:, COEF_AZ].abs().max())
    return floor


def _compare(backend, inp, **kw):
    got = _run(backend, inp, **kw)
    want = _run("reference", inp, **kw)
    truth = _truth(_run, inp, **kw)
    # the new x: float32 arithmetic, one rounding to the storage dtype: within twice the
    # reference's own error against the float64 truth
    assert_close_to_truth(got[0], truth[0], want[0], floor=_floor(truth[0], inp, **kw), what="x_new")
    # logp and logp_var: the reference sums in float64 (its error is ~0), the backends in float32:
    # compared with the reference, to the float32 sums' error of the magnitude
    if got[1] is not None:
        # per-sample sums of D terms in float32: relative error ~ 1e-6 sqrt(D) of the magnitude
        mag = want[1].abs() + 10
        assert_close(got[1], want[1], atol=float(mag.max()) * 2e-5, rtol=1e-5, what="logp")
        assert_close(got[2], want[2], atol=float(want[2].abs().max()) * 2e-5 + 1e-6, rtol=1e-4,
                     what="logp_var")
    if got[3] is not None:  # draws of probe_dist rounded to x's dtype
        floor = draw_atol(kw.get("probe_dist", "rademacher"), truth[3].abs().max())
        assert_close_to_truth(got[3], truth[3], want[3], floor=floor, what="probes_out")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [True, False])
def test_step_matches_reference(backend, device, dtype, per_sample, rng):
    if backend == "triton" and dtype == torch.bfloat16 and device == "cpu":  # compiled on CUDA
        pytest.skip("the Triton interpreter computes bfloat16 arithmetic wrongly")
    B, S = 3, (2, 5, 7)  # D = 70: odd, several chunks/blocks only on larger shapes below
    inp = _inputs(rng, B, S, K=2, P=3, dtype=dtype, device=device)
    seed = torch.randint(0, 2 ** 62, (B,), generator=rng) if per_sample else int(torch.randint(0, 2 ** 62, (), generator=rng))
    _compare(backend, inp, seed=seed, dist="normal", P_out=2, probe_dist="normal")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("S", [(), (1,)], ids=["(B,)", "(B, 1)"])
def test_step_one_element_per_sample_with_per_sample_seeds(backend, device, S, rng):
    """D == 1 with per-sample seeds and probes (the compiled Triton step once failed to build
    there: tests/build/test_triton_compile.py compiles it with D as the constexpr 1)."""
    B = 5
    inp = _inputs(rng, B, S, K=2, P=2, dtype=torch.float32, device=device)
    seed = torch.randint(0, 2 ** 62, (B,), generator=rng)
    _compare(backend, inp, seed=seed, dist="normal", P_out=2, probe_dist="normal")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dist", DISTS)
def test_step_every_increment_law(backend, device, dist, rng):
    inp = _inputs(rng, 2, (3, 11, 13), K=1, P=0, dtype=torch.float32, device=device)
    _compare(backend, inp, seed=int(torch.randint(0, 2 ** 40, (), generator=rng)), dist=dist,
             P_out=1, probe_dist=dist)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("K,P", [(0, 0), (1, 1), (3, 2), (4, 1), (8, 2)])
def test_step_models_and_probes(backend, device, K, P, rng):
    inp = _inputs(rng, 4, (1, 3, 5), K=K, P=P, dtype=torch.float32, device=device)
    _compare(backend, inp, seed=None, dist=None)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_step_large_sample_and_options(backend, device, rng):
    # D = 3 * 37 * 41 = 4551: several CPU chunks and Triton blocks, a partial last one
    inp = _inputs(rng, 2, (3, 37, 41), K=2, P=2, dtype=torch.float32, device=device)
    z = torch.randn(inp["x"].shape, generator=rng)
    _compare(backend, inp, seed=5, dist="normal", z=z, out=True, logp_dtype=torch.float32)
    _compare(backend, inp, seed=5, dist="uniform", track=False, P_out=1)


TRITON = [p for p in BACKENDS if p.values[0] == "triton"]


def _force_triton_splits(monkeypatch, D, block, splits):
    """Route the Triton op through sample_step with BLOCK and the splits per sample forced;
    returns (num_splits, chunk) of that launch."""
    from diffaccel.kernels import step as ks

    monkeypatch.setattr(ks, "sample_step", functools.partial(ks.sample_step, _block_size=block,
                                                             _num_splits=splits))
    return ks._plan(D, block, splits)


@pytest.mark.parametrize("backend,device", TRITON)
@pytest.mark.parametrize("P", [0, 1, 3])
def test_step_triton_split_samples(backend, device, P, rng, monkeypatch):
    """Several programs per sample, the last split short and ending in a partial block: the
    partial sums, their reduction and the probes_out draws match the reference."""
    S = (3, 37, 41)  # D = 4551 = 4 * 1024 + 455: 18 blocks of 256 in 5 splits of <= 4 blocks
    n, chunk = _force_triton_splits(monkeypatch, 4551, 256, 4)
    assert (n, chunk) == (5, 1024)
    inp = _inputs(rng, 3, S, K=2, P=P, dtype=torch.float32, device=device)
    seed = torch.randint(0, 2 ** 62, (3,), generator=rng) if P % 2 else 7
    _compare(backend, inp, seed=seed, dist="normal", P_out=2, probe_dist="normal")


@pytest.mark.parametrize("backend,device", TRITON)
def test_step_triton_split_single_sample(backend, device, rng, monkeypatch):
    """B = 1 (one seed, one finish program) with 4 splits, the last of 1 partial block."""
    n, chunk = _force_triton_splits(monkeypatch, 5 * 7 * 13, 64, 4)
    assert (n, chunk) == (4, 128) and 5 * 7 * 13 - 3 * chunk == 71
    inp = _inputs(rng, 1, (5, 7, 13), K=3, P=2, dtype=torch.float32, device=device)
    _compare(backend, inp, seed=11, dist="laplace", P_out=1, probe_dist="rademacher")


def test_step_triton_split_heuristic():
    """On a 132-SM GPU the grid fills >= 4 programs per SM where D allows, else every program
    takes the fewest elements it may (min_program_elems); the splits cover D exactly."""
    pytest.importorskip("triton")
    from diffaccel.kernels import step as ks

    for B, D in ((64, 16384), (1, 16384), (8, 1 << 20), (256, 4096), (3, 100), (1, 65536)):
        for K in (1, 8):
            block, n, chunk, warps = ks.gpu_plan(B, D, K, 132)
            assert chunk % block == 0 and (n - 1) * chunk < D <= n * chunk, (B, D, K, n, chunk)
            assert ks.min_program_elems(warps) <= block <= ks.max_block(K)
            assert B * n >= 4 * 132 or chunk == block == ks.min_program_elems(warps) or n == -(-D // block), \
                (B, D, K, n, chunk)
    assert ks.gpu_plan(64, 16384, 1, 132) == (1024, 16, 1024, 4)
    assert ks.gpu_plan(1, 16384, 1, 132) == (512, 32, 512, 4)  # was 8 programs of 2048 elements
    assert ks.gpu_plan(1, 16384, 8, 132) == (512, 32, 512, 4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_step_no_tracking_leaves_nothing_else(backend, device, rng):
    """Without logp the step is a pure update: x_new = ax x + az z + sum am M (checked by hand)."""
    inp = _inputs(rng, 3, (5, 7), K=2, P=0, dtype=torch.float32, device=device)
    c = inp["coef"]
    z = torch.randn(inp["x"].shape, generator=rng).to(device)
    x, *_ = _run(backend, inp, seed=None, dist=None, z=z, track=False)
    want = c[:, COEF_AX, None, None] * inp["x"] + c[:, COEF_AZ, None, None] * z
    for k, m in enumerate(inp["models"]):
        want = want + c[:, coef_am(k), None, None] * m
    assert_close(x, want, atol=1e-5, rtol=1e-5, what="x_new")


def test_reference_terms_by_hand(rng):
    """The reference against the formulas of docs/math.md Section 3.1 written out separately."""
    B, D, P = 3, 17, 4
    x, m = torch.randn(B, D, generator=rng, dtype=torch.float64), torch.randn(B, D, generator=rng, dtype=torch.float64)
    z = torch.randn(B, D, generator=rng, dtype=torch.float64)
    v, w = torch.randn(P, B, D, generator=rng, dtype=torch.float64), torch.randn(P, B, D, generator=rng, dtype=torch.float64)
    c = torch.randn(B, coef_width(1), generator=rng, dtype=torch.float64)
    xn, lp, lv, _, _ = ref.sample_step(x, torch.zeros(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64),
                                       [m], c, z, None, 0, None, v, [w], 0, 0, "normal")
    col = lambda j: c[:, j, None]  # noqa: E731  (B, 1)
    s = col(COEF_SX) * x + col(coef_sm(0)) * m
    t = c[None, :, coef_cw(0)] * (v * w).sum(-1)  # (P, B)
    want = (c[:, COEF_C0] + c[:, COEF_C1] * (s * s).sum(1) + c[:, COEF_C2] * (s * z).sum(1)
            + c[:, COEF_C3] * (x * s).sum(1) + t.mean(0))
    assert_close(xn, col(COEF_AX) * x + col(COEF_AZ) * z + col(coef_am(0)) * m, atol=1e-12, what="x_new")
    assert_close(lp, want, atol=1e-9, what="logp")
    assert_close(lv, t.var(0) / P, atol=1e-9, what="logp_var")


def test_probes_out_follow_the_noise_layout(rng):
    """Per-sample seeds: probe p of sample b is the (B, P, *S) noise at probe_offset."""
    import diffaccel

    B, S, P = 3, (4, 5), 2
    seeds = torch.randint(0, 2 ** 40, (B,), generator=rng)
    x = torch.randn(B, *S, generator=rng)
    po = torch.empty(P, B, *S)
    fused_step(x, [], make_coef(B), seed=seeds, probes_out=po, probe_offset=77, probe_dist="normal",
               backend="reference")
    want = diffaccel.noise((B, P, *S), seed=seeds, offset=77, backend="reference").transpose(0, 1)
    assert torch.equal(po, want)
    # batch independence: sample 1 alone gets the same probes
    po1 = torch.empty(P, 1, *S)
    fused_step(x[1:2].clone(), [], make_coef(1), seed=seeds[1:2], probes_out=po1, probe_offset=77,
               probe_dist="normal", backend="reference")
    assert torch.equal(po1[:, 0], po[:, 1])


# ---------------------------------------------------------------------- op contracts

def _op_args(B=3, S=(2, 5), K=2, P=2, P_out=1, device="cpu", y=False, seed=0):
    """Arguments of torch.ops.diffaccel.sample_step: drawn normal increments, P probes and P_out
    next probes; with ``y``: a given z, no probes, the y line clamped at 0.6."""
    g = torch.Generator().manual_seed(seed)
    return [a.to(device) if isinstance(a, torch.Tensor) else [t.to(device) for t in a] if isinstance(a, list) else a
            for a in _op_args_cpu(g, B, S, K, P, P_out, y)]


def _op_args_cpu(g, B, S, K, P, P_out, y):
    x = torch.randn(B, *S, generator=g)
    models = [torch.randn(B, *S, generator=g) for _ in range(K)]
    coef = torch.randn(B, coef_width(K), generator=g)
    lp, seed = torch.zeros(B, dtype=torch.float64), torch.tensor([3], dtype=torch.int64)
    if y:
        z = torch.randn(B, *S, generator=g)
        return [x, lp, torch.zeros(0), models, coef, z, seed, 5, NO_INCREMENT, None, [],
                torch.empty(0, B, *S), 0, RADEMACHER, torch.randn(B, y_width(K), generator=g),
                torch.empty(B, *S), 0.6]
    return [x, lp, torch.zeros(B, dtype=torch.float64), models, coef, None, seed, 5, NORMAL,
            torch.randn(P, B, *S, generator=g), [torch.randn(P, B, *S, generator=g) for _ in range(K)],
            torch.empty(P_out, B, *S), 9, RADEMACHER, None, torch.empty(0), 0.0]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_opcheck(backend, device):
    args = _op_args(device=device)
    torch.library.opcheck(op("sample_step", backend), args)
    out_args = [args[0], torch.empty_like(args[0])] + args[1:]
    torch.library.opcheck(op("sample_step_out", backend), out_args)


def _compile_inputs(rng, B, S):
    """For a step under torch.compile (dynamo reset first): x, one model output, per-sample seeds."""
    torch._dynamo.reset()
    return (torch.randn(B, *S, generator=rng), torch.randn(B, *S, generator=rng),
            torch.randint(0, 2 ** 40, (B,), generator=rng))


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_compile_fullgraph(backend, rng):
    """One step under torch.compile(fullgraph=True): no graph break, no host sync, same numbers."""
    B, S = 4, (3, 6, 5)
    x0, den, seeds = _compile_inputs(rng, B, S)

    def step(x, den, sigma, sigma_next, logp):
        q = sigma ** 2 - sigma_next ** 2
        g = torch.sqrt(q)
        coef = make_coef(B, ax=1 - q / sigma ** 2, am=(q / sigma ** 2,), az=g, sx=-1 / sigma ** 2,
                         sm=(1 / sigma ** 2,), c1=q / 2, c2=g)
        fused_step(x, [den], coef, logp=logp, seed=seeds, offset=3, dist="normal", backend=backend)
        return x, logp

    sig, nxt = torch.tensor(2.0), torch.tensor(1.5)
    xe, le = step(x0.clone(), den, sig, nxt, torch.zeros(B))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
    xc, lc = compiled(x0.clone(), den, sig, nxt, torch.zeros(B))
    assert_close(xc, xe, atol=1e-5, rtol=1e-5, what="x (compiled)")
    assert_close(lc, le, atol=1e-3, rtol=1e-5, what="logp (compiled)")


# ------------------------------------------------------------------------- named errors

def _valid_step(B, S):
    """A valid step (x, one model output, its coefficients) to spoil one argument at a time."""
    return torch.randn(B, *S), torch.randn(B, *S), make_coef(B, am=(1.0,))


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_bad_input_raises_named_errors(backend):
    B, S = 2, (3, 4)
    x, m, c = _valid_step(B, S)
    lp = torch.zeros(B)
    cases = [
        (dict(x=x.long()), TypeError, "x"),
        (dict(models=[torch.randn(B, 4, 3)]), ValueError, "models"),
        (dict(coef=torch.zeros(B, coef_width(1) - 1)), ValueError, "coef"),
        (dict(logp=torch.zeros(B + 1)), ValueError, "logp"),
        (dict(logp=torch.zeros(B, dtype=torch.int32)), TypeError, "logp"),
        (dict(z=torch.randn(B, 12)), ValueError, "z"),
        (dict(seed=1.5, dist="normal"), TypeError, "seed"),
        (dict(seed=None, dist="normal"), ValueError, "seed"),
        (dict(seed=1, dist="cauchy"), ValueError, "dist"),
        (dict(seed=1, offset=-1, dist="normal"), ValueError, "offset"),
        (dict(probes=torch.randn(2, B, *S), vjps=None), ValueError, "vjps"),
        (dict(probes=torch.randn(2, B, *S), vjps=[torch.randn(3, B, *S)]), ValueError, "vjps"),
        (dict(probes_out=torch.randn(2, B, 5)), ValueError, "probes_out"),
        (dict(probe_dist="gamma", seed=1), ValueError, "probe_dist"),
        (dict(x=torch.randn(S[0], B, S[1]).transpose(0, 1)), ValueError, "x"),
    ]
    for change, exc, name in cases:
        kw = dict(x=x.clone(), models=[m], coef=c, logp=lp.clone(), seed=3, dist="normal")
        kw.update(change)
        xx, models, coef = kw.pop("x"), kw.pop("models"), kw.pop("coef")
        with pytest.raises(exc, match=name):
            fused_step(xx, models, coef, backend=backend, **kw)


def test_cpp_kernel_checks_its_arguments():
    """Called directly through torch.ops, the C++ kernel refuses bad shapes with a named error."""
    from diffaccel.backends import availability

    ok, why = availability("cpu", "cpu", "sample_step")
    if not ok:
        pytest.skip(why)
    args = _op_args()
    bad = list(args)
    bad[4] = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="coef"):
        op("sample_step", "cpu")(*bad)
    bad = list(args)
    bad[10] = [torch.randn(2, 3, 2, 5)]
    with pytest.raises(RuntimeError, match="vjps"):
        op("sample_step", "cpu")(*bad)
    bad = list(args)
    bad[8] = 9
    with pytest.raises(RuntimeError, match="dist"):
        op("sample_step", "cpu")(*bad)


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_compile_fullgraph_hutchinson_step(backend, rng):
    """A PF-ODE step with probes, vjps, two accumulators and next-probe output compiles without
    graph breaks and matches eager."""
    torch._dynamo.reset()
    B, S, P = 3, (2, 5, 7), 2
    x0 = torch.randn(B, *S, generator=rng)
    den = torch.randn(B, *S, generator=rng)
    v = torch.randn(P, B, *S, generator=rng)
    w = torch.randn(P, B, *S, generator=rng)

    def step(x, sigma, sigma_next, logp, var, spare):
        r = (sigma_next - sigma) / sigma
        coef = make_coef(B, ax=1 + r, am=(-r,), c0=-70 * r, cw=(r,))
        fused_step(x, [den], coef, logp=logp, logp_var=var, probes=v, vjps=[w], probes_out=spare,
                   seed=11, probe_offset=5, backend=backend)
        return x, logp, var, spare

    args = lambda: (x0.clone(), torch.tensor(2.0), torch.tensor(1.5), torch.zeros(B, dtype=torch.float64),  # noqa: E731
                    torch.zeros(B, dtype=torch.float64), torch.empty(1, B, *S))
    want = step(*args())
    # Inductor on the reference's int64 Philox (probe draws) builds a pathological fused
    # expression; the reference and the Triton launcher are traced with aot_eager instead
    compiled = torch.compile(step, fullgraph=True,
                             backend="inductor" if backend in ("cpu", "cuda") else "aot_eager")
    got = compiled(*args())
    for g, e, what in zip(got, want, ("x", "logp", "logp_var", "probes_out")):
        assert_close(g, e, atol=1e-4, rtol=1e-5, what=f"{what} (compiled)")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_step_with_no_elements_adds_c0(backend, device, rng):
    """D = 0 (B > 0): nothing to update, and logp gets c0, the reference's sums over no elements."""
    inp = _inputs(rng, 3, (0,), K=2, P=2, dtype=torch.float32, device=device)
    got = _run(backend, inp, seed=5, dist="normal", P_out=1)
    want = _run("reference", inp, seed=5, dist="normal", P_out=1)
    c0 = inp["coef"][:, COEF_C0].double().cpu()
    assert_close(got[1], want[1], atol=1e-6, what="logp")
    assert_close(got[1] - torch.linspace(-3, 3, 3, dtype=torch.float64), c0, atol=1e-6, what="logp - start")
    assert_close(got[2], want[2], atol=1e-12, what="logp_var")
    # an empty batch changes nothing
    assert _run(backend, _inputs(rng, 0, (4,), K=1, P=1, dtype=torch.float32, device=device),
                seed=5, dist="normal")[1].numel() == 0


# ============================================================== the optional y line

def _y_inputs(rng, B, S, K, dtype, P=0):
    return _inputs(rng, B, S, K, P, dtype, ycoef=True)


def _y_run(backend, inp, *, z=None, dist=None, seed=None, clip=None, track=True, y_out=True, out=True,
         ycoef=True):
    x = inp["x"].clone()
    B = x.shape[0]
    lp = torch.linspace(-2, 2, B, dtype=torch.float64) if track else None
    lv = torch.full((B,), 0.5, dtype=torch.float64) if track and inp["probes"] is not None else None
    yo = torch.full_like(x, 5.0) if y_out else None
    o = torch.full_like(x, 9.0) if out else None
    res = fused_step(x, inp["models"], inp["coef"], logp=lp, logp_var=lv, z=z, seed=seed, offset=7,
                     dist=dist, probes=inp["probes"], vjps=inp["vjps"], out=o,
                     ycoef=inp["ycoef"] if ycoef else None, y_out=yo, clip=clip, backend=backend)
    if out:
        assert torch.equal(x, inp["x"]), "out=: x must be left unchanged"
    return res, lp, lv, yo


# ------------------------------------------------------------------ y line: the reference

@pytest.mark.parametrize("clip", [None, 0.7])
def test_reference_against_the_formula(rng, clip):
    """float64: y, its clamp, x_new, and logp = c0 + c1|s|^2 + c2 s.z + c3 x.s + cz|z|^2 + cn|x_new|^2."""
    B, D, K = 4, 23, 2
    f = lambda *s: torch.randn(*s, generator=rng, dtype=torch.float64)  # noqa: E731
    x, z, m = f(B, D), f(B, D), [f(B, D) for _ in range(K)]
    c, yc = f(B, coef_width(K)), f(B, y_width(K))
    xn, lp, _, _, yout = ref.sample_step(x, torch.zeros(B, dtype=torch.float64), torch.zeros(0), m, c,
                                         z, None, 0, None, None, [], 0, 0, "normal", ycoef=yc, clip=clip)
    col = lambda t, j: t[:, j, None]  # noqa: E731  (B, 1)
    y = col(yc, Y_BX) * x + col(yc, y_bm(0)) * m[0] + col(yc, y_bm(1)) * m[1]
    if clip is not None:
        y = torch.minimum(torch.maximum(y, torch.full_like(y, -clip)), torch.full_like(y, clip))
        assert bool((y.abs() == clip).any()), "the test should clamp some elements"
    want_xn = (col(c, COEF_AX) * x + col(c, COEF_AZ) * z + col(c, coef_am(0)) * m[0]
               + col(c, coef_am(1)) * m[1] + col(yc, Y_AY) * y)
    s = col(c, COEF_SX) * x + col(c, coef_sm(0)) * m[0] + col(c, coef_sm(1)) * m[1] + col(yc, Y_SY) * y
    want_lp = (c[:, COEF_C0] + c[:, COEF_C1] * (s * s).sum(1) + c[:, COEF_C2] * (s * z).sum(1)
               + c[:, COEF_C3] * (x * s).sum(1) + yc[:, Y_CZ] * (z * z).sum(1)
               + yc[:, Y_CN] * (want_xn * want_xn).sum(1))
    assert_close(yout, y, atol=1e-12, what="y_out")
    assert_close(xn, want_xn, atol=1e-12, what="x_new")
    assert_close(lp, want_lp, atol=1e-9, rtol=1e-12, what="logp")


# ------------------------------------------------------------ y line: backends vs reference

def _y_compare(backend, inp, **kw):
    got = _y_run(backend, inp, **kw)
    want = _y_run("reference", inp, **kw)
    truth = _truth(_y_run, inp, **kw)
    # float32 arithmetic, one rounding to the storage dtype; the clamp is exact
    assert_close_to_truth(got[3], truth[3], want[3], floor=_floor(truth[3], inp), what="y_out")
    assert_close_to_truth(got[0], truth[0], want[0], floor=_floor(truth[0], inp, **kw), what="x_new")
    if got[1] is not None:  # (the reference sums in float64: see _compare)
        # per-sample float32 sums of D terms, each of magnitude up to ~scale^4
        mag = float(want[1].abs().max()) + 10
        assert_close(got[1], want[1], atol=mag * 5e-5, rtol=1e-5, what="logp")
    if got[2] is not None:
        assert_close(got[2], want[2], atol=float(want[2].abs().max()) * 2e-5 + 1e-6, rtol=1e-4,
                     what="logp_var")
    return got, want


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("noise", ["drawn", "given", "none"])
@pytest.mark.parametrize("clip", [None, 0.8])
def test_backend_matches_reference(backend, dtype, noise, clip, rng):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bfloat16 arithmetic wrongly")
    B, S, K = 3, (3, 5, 7), 2
    inp = _y_inputs(rng, B, S, K, dtype)
    kw = dict(clip=clip)
    if noise == "drawn":
        kw.update(dist="normal", seed=torch.randint(0, 2 ** 62, (B,), generator=rng))
    elif noise == "given":
        kw.update(z=torch.randn(B, *S, generator=rng).to(dtype))
    _y_compare(backend, inp, **kw)


@pytest.mark.parametrize("backend", RUNNABLE)
def test_backend_long_rows_probes_and_one_model(backend, rng):
    """Several CPU chunks / Triton blocks per sample (D = 1300), K = 1, Hutchinson probes on, in
    place (no out=), without logp, and without y_out (the y line still feeds x_new)."""
    inp = _y_inputs(rng, 2, (13, 100), 1, torch.float32, P=2)
    _y_compare(backend, inp, clip=0.5, dist="laplace", seed=11)
    _y_compare(backend, inp, clip=0.5, z=torch.randn(2, 13, 100, generator=rng), out=False)
    got = _y_run(backend, inp, clip=1.5, track=False, y_out=False)
    want = _y_run("reference", inp, clip=1.5, track=False, y_out=False)
    assert_close(got[0], want[0], atol=1e-4, rtol=1e-5, what="x_new (no y_out)")


@pytest.mark.parametrize("backend", RUNNABLE)
def test_noncontiguous_inputs(backend, rng):
    """Model outputs, z and ycoef may be strided views (x too, with out=)."""
    B, K = 3, 2
    big = torch.randn(B, 6, 22, generator=rng)
    inp = dict(x=big[:, ::2, 1:],
               models=[big[:, 1::2, :21], torch.randn(B, 22, 3, generator=rng).transpose(1, 2)[..., :21]],
               coef=torch.randn(B, coef_width(K), generator=rng),
               ycoef=torch.randn(y_width(K) + 3, B, generator=rng)[2:-1].t(), probes=None, vjps=None)
    assert not inp["x"].is_contiguous() and not inp["ycoef"].is_contiguous()
    assert not any(m.is_contiguous() for m in inp["models"])
    z = torch.randn(B, 21, 3, generator=rng).transpose(1, 2)
    _y_compare(backend, inp, z=z, clip=0.9)


@pytest.mark.parametrize("backend", RUNNABLE)
def test_zero_y_coefficients_change_nothing(backend, rng):
    """The y line is additive: ycoef = 0 gives bitwise the plain step's x_new and logp, and the
    plain step (no ycoef) writes no y_out."""
    inp = _y_inputs(rng, 3, (4, 33), 2, torch.float32, P=2)
    inp["ycoef"] = torch.zeros_like(inp["ycoef"])
    inp["ycoef"][:, Y_BX] = 1.0  # y = x: yc finite, ay = sy = cz = cn = 0
    kw = dict(dist="normal", seed=5)
    with_y = _y_run(backend, inp, **kw)
    plain = _y_run(backend, inp, y_out=False, ycoef=False, **kw)
    assert torch.equal(with_y[0], plain[0]), "x_new"
    assert torch.equal(with_y[1], plain[1]), "logp"
    assert torch.equal(with_y[2], plain[2]), "logp_var"
    assert torch.equal(with_y[3], inp["x"]), "y_out = x"


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_nan_stays_in_its_sample_and_survives_the_clamp(backend, rng):
    """A NaN model output of sample 1 makes its y NaN (torch.clamp keeps NaN, min/max would not),
    its x_new and logp NaN; samples 0 and 2 are untouched."""
    B, S = 3, (4, 9)
    inp = _y_inputs(rng, B, S, 1, torch.float32)
    inp["ycoef"][:, y_bm(0)] = 1.0
    inp["models"][0][1, 2, 3] = float("nan")
    got = _y_run(backend, inp, clip=0.5, z=torch.randn(B, *S, generator=rng))
    assert torch.isnan(got[3][1, 2, 3]), "y_out: the clamp replaced NaN"
    assert int(torch.isnan(got[3]).sum()) == 1
    assert torch.isnan(got[0][1]).any() and torch.isnan(got[1][1])
    for b in (0, 2):
        assert torch.isfinite(got[0][b]).all() and torch.isfinite(got[3][b]).all()
        assert torch.isfinite(got[1][b])
    if backend != "reference":
        want = _y_run("reference", inp, clip=0.5, z=torch.randn(B, *S, generator=rng))
        keep = torch.tensor([0, 2])
        assert_close(got[3][keep], want[3][keep], atol=1e-5, what="y_out (finite samples)")


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_empty_batch_and_empty_rows(backend, rng):
    """B = 0 changes nothing; D = 0 adds c0 to logp (the y sums over no elements are 0)."""
    inp = _y_inputs(rng, 0, (4,), 1, torch.float32)
    got = _y_run(backend, inp, clip=1.0, dist="normal", seed=1)
    assert got[0].numel() == 0 and got[1].numel() == 0
    inp = _y_inputs(rng, 3, (0,), 2, torch.float32)
    got = _y_run(backend, inp, clip=1.0, dist="normal", seed=1)
    assert_close(got[1] - torch.linspace(-2, 2, 3, dtype=torch.float64), inp["coef"][:, COEF_C0].double(),
                 atol=1e-6, what="logp - start")


# ------------------------------------------------------------------ y line: op contracts

@pytest.mark.parametrize("backend", RUNNABLE)
def test_y_opcheck(backend):
    args = _op_args(y=True)
    torch.library.opcheck(op("sample_step", backend), args)
    torch.library.opcheck(op("sample_step_out", backend), [args[0], torch.empty_like(args[0])] + args[1:])


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_y_compile_fullgraph(backend, rng):
    """A DDIM-like step (x0 clamped, fed into x_new, returned) compiles without graph breaks."""
    B, S = 3, (2, 5, 7)
    x_, eps, seeds = _compile_inputs(rng, B, S)

    def step(x, a, a_prev, logp):
        yc = make_ycoef(B, bx=1 / a.sqrt(), bm=(-(1 - a).sqrt() / a.sqrt(),), ay=a_prev.sqrt(),
                        cz=-0.01)
        coef = make_coef(B, am=((1 - a_prev).sqrt() * 0.9,), ax=0.0, az=0.1, c0=-1.0)
        x0 = torch.empty_like(x)
        prev = fused_step(x, [eps], coef, ycoef=yc, y_out=x0, clip=1.0, logp=logp, seed=seeds,
                          dist="normal", out=torch.empty_like(x), backend=backend)
        return prev, x0, logp

    a, ap = torch.tensor(0.5), torch.tensor(0.7)
    want = step(x_.clone(), a, ap, torch.zeros(B))
    compiled = torch.compile(step, fullgraph=True,
                             backend="inductor" if backend in ("cpu", "cuda") else "aot_eager")
    got = compiled(x_.clone(), a, ap, torch.zeros(B))
    for g_, w_, what in zip(got, want, ("prev", "x0", "logp")):
        assert_close(g_, w_, atol=1e-4, rtol=1e-5, what=f"{what} (compiled)")


# ------------------------------------------------------------------ y line: named errors

@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_y_bad_input_raises_named_errors(backend):
    B, S = 2, (3, 4)
    x, m, c = _valid_step(B, S)
    yc = make_ycoef(B, bx=1.0, bm=(0.5,))
    cases = [
        (dict(ycoef=torch.zeros(B, y_width(1) - 1)), ValueError, "ycoef"),
        (dict(ycoef=torch.zeros(B, y_width(1), dtype=torch.int64)), TypeError, "ycoef"),
        (dict(ycoef=[[0.0] * y_width(1)] * 2), TypeError, "ycoef"),
        (dict(ycoef=None, y_out=torch.empty(B, *S)), ValueError, "y_out"),
        (dict(ycoef=None, y_out=None, clip=1.0), ValueError, "clip"),
        (dict(y_out=torch.empty(B, 12)), ValueError, "y_out"),
        (dict(y_out=torch.empty(B, *S, dtype=torch.float16)), ValueError, "y_out"),
        (dict(y_out=torch.empty(S[0], B, S[1]).transpose(0, 1)), ValueError, "y_out"),
        (dict(y_out="x"), ValueError, "y_out"),
        (dict(y_out="out", out=torch.empty(B, *S)), ValueError, "y_out"),
        (dict(clip=0.0), ValueError, "clip"),
        (dict(clip=-1.0), ValueError, "clip"),
        (dict(clip=float("nan")), ValueError, "clip"),
        (dict(clip=float("inf")), ValueError, "clip"),
        (dict(clip=True), TypeError, "clip"),
        (dict(clip=torch.tensor(1.0)), TypeError, "clip"),
    ]
    for change, exc, name in cases:
        xx = x.clone()
        kw = dict(ycoef=yc, y_out=torch.empty(B, *S), clip=1.0, seed=3, dist="normal")
        kw.update(change)
        if isinstance(kw["y_out"], str):  # an alias of x or of out
            kw["y_out"] = xx if kw["y_out"] == "x" else kw["out"]
        with pytest.raises(exc, match=name):
            fused_step(xx, [m], c, backend=backend, **kw)
        assert torch.equal(xx, x), f"{change}: x changed before the error"


def test_cpp_kernel_checks_the_y_arguments():
    from diffaccel.backends import availability

    ok, why = availability("cpu", "cpu", "sample_step")
    if not ok:
        pytest.skip(why)
    args = _op_args(y=True, seed=1)
    for i, value, name in ((14, torch.randn(3, 9), "ycoef"), (15, torch.empty(3, 2, 4), "y_out"),
                           (16, -1.0, "clip"), (16, float("nan"), "clip")):
        bad = list(args)
        bad[i] = value
        with pytest.raises(RuntimeError, match=name):
            op("sample_step", "cpu")(*bad)
    bad = list(args)
    bad[14] = None
    with pytest.raises(RuntimeError, match="y_out"):
        op("sample_step", "cpu")(*bad)
    bad = list(args)
    bad[15] = bad[0]
    with pytest.raises(RuntimeError, match="y_out"):
        op("sample_step", "cpu")(*bad)
