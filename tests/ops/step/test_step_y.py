"""The fused step's optional y line (a second linear combination, clamped, written beside the
step and fed into it in the same pass): the reference against the formula written out in
float64, every backend against the reference, the plain step left unchanged, NaN confinement,
empty batches, the op contracts and named errors."""
import pytest
import torch

from support import assert_close, backend_params
from diffaccel.library import op
from diffaccel.reference import step as ref
from diffaccel.sampling.step import fused_step, make_coef, make_ycoef

BACKENDS = backend_params("sample_step")
RUNNABLE = [p.values[0] for p in BACKENDS if not p.marks]


def _inputs(rng, B, S, K, dtype, P=0):
    def r(*shape):
        return torch.randn(*shape, generator=rng).to(dtype)

    return dict(x=r(B, *S), models=[r(B, *S) for _ in range(K)],
                coef=torch.randn(B, 7 + 3 * K, generator=rng), ycoef=torch.randn(B, 5 + K, generator=rng),
                probes=r(P, B, *S) if P else None, vjps=[r(P, B, *S) for _ in range(K)] if P else None)


def _run(backend, inp, *, z=None, dist=None, seed=None, clip=None, track=True, y_out=True, out=True,
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


def _tol(dtype):
    return {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]


# ------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("clip", [None, 0.7])
def test_reference_against_the_formula(rng, clip):
    """float64: y, its clamp, x_new, and logp = c0 + c1|s|^2 + c2 s.z + c3 x.s + cz|z|^2 + cn|x_new|^2."""
    B, D, K = 4, 23, 2
    f = lambda *s: torch.randn(*s, generator=rng, dtype=torch.float64)  # noqa: E731
    x, z, m = f(B, D), f(B, D), [f(B, D) for _ in range(K)]
    c, yc = f(B, 7 + 3 * K), f(B, 5 + K)
    xn, lp, _, _, yout = ref.sample_step(x, torch.zeros(B, dtype=torch.float64), torch.zeros(0), m, c,
                                         z, None, 0, None, None, [], 0, 0, "normal", ycoef=yc, clip=clip)
    y = yc[:, 0:1] * x + yc[:, 5:6] * m[0] + yc[:, 6:7] * m[1]
    if clip is not None:
        y = torch.minimum(torch.maximum(y, torch.full_like(y, -clip)), torch.full_like(y, clip))
        assert bool((y.abs() == clip).any()), "the test should clamp some elements"
    want_xn = c[:, 0:1] * x + c[:, 1:2] * z + c[:, 7:8] * m[0] + c[:, 10:11] * m[1] + yc[:, 1:2] * y
    s = c[:, 2:3] * x + c[:, 8:9] * m[0] + c[:, 11:12] * m[1] + yc[:, 2:3] * y
    want_lp = (c[:, 3] + c[:, 4] * (s * s).sum(1) + c[:, 5] * (s * z).sum(1) + c[:, 6] * (x * s).sum(1)
               + yc[:, 3] * (z * z).sum(1) + yc[:, 4] * (want_xn * want_xn).sum(1))
    assert_close(yout, y, atol=1e-12, what="y_out")
    assert_close(xn, want_xn, atol=1e-12, what="x_new")
    assert_close(lp, want_lp, atol=1e-9, rtol=1e-12, what="logp")


# --------------------------------------------------------------------- backends vs reference

def _compare(backend, inp, **kw):
    got = _run(backend, inp, **kw)
    want = _run("reference", inp, **kw)
    dt = inp["x"].dtype
    scale = 1 + sum(float(m.abs().max()) for m in inp["models"]) + float(inp["x"].abs().max())
    # float32 arithmetic, one rounding to the storage dtype; the clamp is exact
    assert_close(got[3], want[3], atol=_tol(dt) * scale * 4, rtol=_tol(dt), what="y_out")
    assert_close(got[0], want[0], atol=_tol(dt) * scale * scale * 4, rtol=_tol(dt), what="x_new")
    if got[1] is not None:
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
        pytest.skip("the Triton interpreter's bfloat16 is unreliable (ARCHITECTURE.md)")
    B, S, K = 3, (3, 5, 7), 2
    inp = _inputs(rng, B, S, K, dtype)
    kw = dict(clip=clip)
    if noise == "drawn":
        kw.update(dist="normal", seed=torch.randint(0, 2 ** 62, (B,), generator=rng))
    elif noise == "given":
        kw.update(z=torch.randn(B, *S, generator=rng).to(dtype))
    _compare(backend, inp, **kw)


@pytest.mark.parametrize("backend", RUNNABLE)
def test_backend_long_rows_probes_and_one_model(backend, rng):
    """Several CPU chunks / Triton blocks per sample (D = 1300), K = 1, Hutchinson probes on, in
    place (no out=), without logp, and without y_out (the y line still feeds x_new)."""
    inp = _inputs(rng, 2, (13, 100), 1, torch.float32, P=2)
    _compare(backend, inp, clip=0.5, dist="laplace", seed=11)
    _compare(backend, inp, clip=0.5, z=torch.randn(2, 13, 100, generator=rng), out=False)
    got = _run(backend, inp, clip=1.5, track=False, y_out=False)
    want = _run("reference", inp, clip=1.5, track=False, y_out=False)
    assert_close(got[0], want[0], atol=1e-4, rtol=1e-5, what="x_new (no y_out)")


@pytest.mark.parametrize("backend", RUNNABLE)
def test_noncontiguous_inputs(backend, rng):
    """Model outputs, z and ycoef may be strided views (x too, with out=)."""
    B, K = 3, 2
    big = torch.randn(B, 6, 22, generator=rng)
    inp = dict(x=big[:, ::2, 1:],
               models=[big[:, 1::2, :21], torch.randn(B, 22, 3, generator=rng).transpose(1, 2)[..., :21]],
               coef=torch.randn(B, 7 + 3 * K, generator=rng),
               ycoef=torch.randn(5 + K + 3, B, generator=rng)[2:-1].t(), probes=None, vjps=None)
    assert not inp["x"].is_contiguous() and not inp["ycoef"].is_contiguous()
    assert not any(m.is_contiguous() for m in inp["models"])
    z = torch.randn(B, 21, 3, generator=rng).transpose(1, 2)
    _compare(backend, inp, z=z, clip=0.9)


@pytest.mark.parametrize("backend", RUNNABLE)
def test_zero_y_coefficients_change_nothing(backend, rng):
    """The y line is additive: ycoef = 0 gives bitwise the plain step's x_new and logp, and the
    plain step (no ycoef) writes no y_out."""
    inp = _inputs(rng, 3, (4, 33), 2, torch.float32, P=2)
    inp["ycoef"] = torch.zeros_like(inp["ycoef"])
    inp["ycoef"][:, 0] = 1.0  # y = x: yc finite, ay = sy = cz = cn = 0
    kw = dict(dist="normal", seed=5)
    with_y = _run(backend, inp, **kw)
    plain = _run(backend, inp, y_out=False, ycoef=False, **kw)
    assert torch.equal(with_y[0], plain[0]), "x_new"
    assert torch.equal(with_y[1], plain[1]), "logp"
    assert torch.equal(with_y[2], plain[2]), "logp_var"
    assert torch.equal(with_y[3], inp["x"]), "y_out = x"


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_nan_stays_in_its_sample_and_survives_the_clamp(backend, rng):
    """A NaN model output of sample 1 makes its y NaN (torch.clamp keeps NaN, min/max would not),
    its x_new and logp NaN; samples 0 and 2 are untouched."""
    B, S = 3, (4, 9)
    inp = _inputs(rng, B, S, 1, torch.float32)
    inp["ycoef"][:, 5] = 1.0
    inp["models"][0][1, 2, 3] = float("nan")
    got = _run(backend, inp, clip=0.5, z=torch.randn(B, *S, generator=rng))
    assert torch.isnan(got[3][1, 2, 3]), "y_out: the clamp replaced NaN"
    assert int(torch.isnan(got[3]).sum()) == 1
    assert torch.isnan(got[0][1]).any() and torch.isnan(got[1][1])
    for b in (0, 2):
        assert torch.isfinite(got[0][b]).all() and torch.isfinite(got[3][b]).all()
        assert torch.isfinite(got[1][b])
    if backend != "reference":
        want = _run("reference", inp, clip=0.5, z=torch.randn(B, *S, generator=rng))
        keep = torch.tensor([0, 2])
        assert_close(got[3][keep], want[3][keep], atol=1e-5, what="y_out (finite samples)")


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_empty_batch_and_empty_rows(backend, rng):
    """B = 0 changes nothing; D = 0 adds c0 to logp (the y sums over no elements are 0)."""
    inp = _inputs(rng, 0, (4,), 1, torch.float32)
    got = _run(backend, inp, clip=1.0, dist="normal", seed=1)
    assert got[0].numel() == 0 and got[1].numel() == 0
    inp = _inputs(rng, 3, (0,), 2, torch.float32)
    got = _run(backend, inp, clip=1.0, dist="normal", seed=1)
    assert_close(got[1] - torch.linspace(-2, 2, 3, dtype=torch.float64), inp["coef"][:, 3].double(),
                 atol=1e-6, what="logp - start")


# ------------------------------------------------------------------------- op contracts

def _op_args(g, B=3, S=(2, 5), K=2):
    x = torch.randn(B, *S, generator=g)
    return [x, torch.zeros(B, dtype=torch.float64), torch.zeros(0),
            [torch.randn(B, *S, generator=g) for _ in range(K)], torch.randn(B, 7 + 3 * K, generator=g),
            torch.randn(B, *S, generator=g), torch.tensor([3], dtype=torch.int64), 5, -1, None, [],
            torch.empty(0, B, *S), 0, 3, torch.randn(B, 5 + K, generator=g), torch.empty(B, *S), 0.6]


@pytest.mark.parametrize("backend", RUNNABLE)
def test_opcheck(backend):
    args = _op_args(torch.Generator().manual_seed(0))
    torch.library.opcheck(op("sample_step", backend), args)
    torch.library.opcheck(op("sample_step_out", backend), [args[0], torch.empty_like(args[0])] + args[1:])


@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_compile_fullgraph(backend, rng):
    """A DDIM-like step (x0 clamped, fed into x_new, returned) compiles without graph breaks."""
    torch._dynamo.reset()
    B, S = 3, (2, 5, 7)
    x_ = torch.randn(B, *S, generator=rng)
    eps = torch.randn(B, *S, generator=rng)
    seeds = torch.randint(0, 2 ** 40, (B,), generator=rng)

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


# ------------------------------------------------------------------------- named errors

@pytest.mark.parametrize("backend", ["reference"] + RUNNABLE)
def test_bad_input_raises_named_errors(backend):
    B, S = 2, (3, 4)
    x = torch.randn(B, *S)
    m = torch.randn(B, *S)
    c = make_coef(B, am=(1.0,))
    yc = make_ycoef(B, bx=1.0, bm=(0.5,))
    cases = [
        (dict(ycoef=torch.zeros(B, 5)), ValueError, "ycoef"),
        (dict(ycoef=torch.zeros(B, 6, dtype=torch.int64)), TypeError, "ycoef"),
        (dict(ycoef=[[0.0] * 6] * 2), TypeError, "ycoef"),
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
    args = _op_args(torch.Generator().manual_seed(1))
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
