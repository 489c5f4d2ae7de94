"""sample_step / sample_step_out called through torch.ops with one bad argument: the C++ kernels,
the Triton implementation and the fake function refuse it alike (RuntimeError naming the
argument; the Python mirror of csrc/step_checks.h is diffaccel/ops/step.py). The public API's
own errors (fused_step) are tested in test_step.py and tests/test_bad_input.py."""
import pytest
import torch

from diffaccel.layout import MAX_MODELS, MAX_PROBES, NORMAL, RADEMACHER, coef_width, y_width
from support.op_checks import CHECK_BACKENDS, assert_accepts, assert_rejects

pytestmark = pytest.mark.usefixtures("one_thread")

B, S = 2, (3, 4)
ARGS = ("x", "logp", "logp_var", "models", "coef", "z", "seeds", "offset", "dist", "probes",
        "vjps", "probes_out", "probe_offset", "probe_dist", "ycoef", "y_out", "clip")


def _valid(K=1, P=2):
    x = torch.randn(B, *S)
    return dict(x=x, logp=torch.zeros(B), logp_var=torch.zeros(B),
                models=[torch.randn(B, *S) for _ in range(K)], coef=torch.zeros(B, coef_width(K)),
                z=None, seeds=torch.tensor([3]), offset=0, dist=NORMAL,
                probes=torch.randn(P, B, *S), vjps=[torch.randn(P, B, *S) for _ in range(K)],
                probes_out=torch.empty(1, B, *S), probe_offset=0, probe_dist=RADEMACHER,
                ycoef=torch.zeros(B, y_width(K)), y_out=torch.empty(B, *S), clip=0.0)


def _probes_out_is_probes(a):
    a["probes_out"] = a["probes"]


def _y_out_is_x(a):
    a["y_out"] = a["x"]


CASES = [
    ("x", dict(x=torch.randn(B, *S).long())),
    ("x", dict(x=torch.randn(B, *S).double())),
    ("logp", dict(logp=torch.zeros(B + 1))),
    ("logp", dict(logp=torch.zeros(B, dtype=torch.int32))),
    ("logp_var", dict(logp=torch.zeros(0))),
    ("models", dict(models=[torch.randn(B, 4, 3)])),
    ("models", dict(models=[torch.randn(B, *S).half()])),
    ("models", dict(models=[torch.randn(B, *S)] * (MAX_MODELS + 1))),
    ("coef", dict(coef=torch.zeros(B, coef_width(1) + 1))),
    ("coef", dict(coef=torch.zeros(B + 1, coef_width(1)))),
    ("coef", dict(coef=torch.zeros(B, coef_width(1), dtype=torch.float64))),
    ("z", dict(z=torch.randn(B, 12))),
    ("seed", dict(seeds=torch.tensor([1.5]))),
    ("seed", dict(seeds=torch.tensor([1, 2, 3]))),
    ("offset", dict(offset=-1)),
    ("offset", dict(probe_offset=-1)),
    ("dist", dict(dist=4)),
    ("dist", dict(dist=-2)),
    ("probe_dist", dict(probe_dist=-1)),
    ("probes", dict(probes=torch.randn(2, B, 5), vjps=[torch.randn(2, B, 5)])),
    ("probes", dict(probes=torch.randn(MAX_PROBES + 1, B, *S),
                    vjps=[torch.randn(MAX_PROBES + 1, B, *S)])),
    ("vjps", dict(vjps=[])),
    ("vjps", dict(vjps=[torch.randn(3, B, *S)])),
    ("vjps", dict(probes=None)),
    ("probes_out", dict(probes_out=torch.empty(2, B, 5))),
    ("probes_out", dict(probes_out=torch.empty(MAX_PROBES + 1, B, *S))),
    ("probes_out", dict(probes_out=torch.empty(B, 2, *S).transpose(0, 1))),
    ("probes_out", _probes_out_is_probes),
    ("ycoef", dict(ycoef=torch.zeros(B, y_width(1) + 1))),
    ("ycoef", dict(ycoef=torch.zeros(B, y_width(1), dtype=torch.float64))),
    ("y_out", dict(ycoef=None)),
    ("y_out", dict(y_out=torch.empty(B, 12))),
    ("y_out", _y_out_is_x),
    ("clip", dict(clip=-1.0)),
    ("clip", dict(clip=float("nan"))),
    ("clip", dict(clip=float("inf"))),
]


def _args(change, K=1):
    a = _valid(K)
    change(a) if callable(change) else a.update(change)
    return a


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
def test_valid_arguments_pass(backend):
    for name in ("sample_step", "sample_step_out"):
        a = _valid()
        if name == "sample_step_out":
            a = dict(x=a.pop("x"), out=torch.empty(B, *S), **a)
        assert_accepts(name, backend, tuple(a.values()))


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
@pytest.mark.parametrize("argname,change", CASES, ids=[f"{n}{i}" for i, (n, _) in enumerate(CASES)])
def test_bad_argument_is_named(backend, argname, change):
    a = _args(change)
    assert_rejects("sample_step", backend, tuple(a[k] for k in ARGS), argname)


@pytest.mark.parametrize("backend", CHECK_BACKENDS)
def test_bad_out_and_layout(backend):
    """sample_step writes x in place (contiguous); sample_step_out writes out (x's shape, dtype,
    contiguous) and reads any x."""
    a = _valid()
    a["x"] = torch.randn(S[0], B, S[1]).transpose(0, 1)
    assert_rejects("sample_step", backend, tuple(a[k] for k in ARGS), "x")
    for out in (torch.empty(B, *S).half(), torch.empty(B, 12), torch.empty(S[0], B, S[1]).transpose(0, 1)):
        a = _valid()
        assert_rejects("sample_step_out", backend, (a.pop("x"), out, *a.values()), "out")
