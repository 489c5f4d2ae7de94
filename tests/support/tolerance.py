"""One tolerance rule for "a backend against the reference", flash-attention's
(hopper/test_flash_attn.py: ``(out - out_ref).abs().max() <= 2 * (out_pt - out_ref).abs().max() + atol``):

    max |actual - truth|  <=  factor * max |ref_lowp - truth|  +  floor

``truth`` is the reference run on the same inputs in float64, ``ref_lowp`` the plain reference in
the dtype under test (float32 / float16 / bfloat16). The reference's own error measures what the
dtype allows on these very inputs (their sizes, how many terms a sum has, how often the result
rounds), so no tolerance table per dtype and no guessed scale is needed; ``floor`` covers what the
reference's error cannot show (e.g. normal draws, whose last bits differ between libraries: docs/math.md
Section 1) and should be small. Bit-exact outputs (noise streams, integers) are compared with
``torch.equal``, not with this."""
import math

import torch

# How far one draw of each law may differ between backends (the integers agree bit for bit; libm /
# Sleef / Triton log and cos differ in the last bits: normals to 4e-6, docs/math.md Section 1;
# uniform draws to 1-2 ulp of |z| <= 1.8: the C++ build contracts (u - 1/2) * sqrt(12) into an FMA).
LAW_ATOL = {"normal": 4e-6, "laplace": 4e-6, "uniform": 4e-7, "rademacher": 0.0}
# the largest |draw| of each law (the clamps of docs/math.md Section 1)
LAW_MAX = {"normal": math.sqrt(-2 * math.log(1e-7)), "laplace": -math.log(1e-7) / math.sqrt(2),
           "uniform": math.sqrt(3), "rademacher": 1.0}


def draw_atol(dist, size):
    """How far draws of law ``dist`` of magnitude up to ``size`` may differ between backends:
    LAW_ATOL per unit of max(1, size) (the last bits of log and cos scale with the value)."""
    return LAW_ATOL[dist] * max(1.0, float(size))


def to_float64(obj):
    """The same structure (tensor, list, tuple, dict) with its floating-point tensors in float64."""
    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float64(o) for o in obj)
    if isinstance(obj, dict):
        return {k: to_float64(v) for k, v in obj.items()}
    return obj


def _errors(a, truth):
    """|a - truth| in float64, 0 where both are NaN (a NaN where truth is finite stays NaN)."""
    err = (a - truth).abs()
    return torch.where(torch.isnan(a) & torch.isnan(truth), torch.zeros_like(err), err)


def assert_close_to_truth(actual, truth, ref_lowp, *, factor=2.0, floor=0.0, what="values"):
    """Assert flash-attention's rule (module docstring); on failure say how many elements exceed
    the bound and where, like ``support.assert_close``. Returns (max error, bound)."""
    actual, truth, ref_lowp = (t.detach().double().cpu() for t in (actual, truth, ref_lowp))
    for name, t in (("actual", actual), ("ref_lowp", ref_lowp)):
        assert t.shape == truth.shape, f"{what}: {name} shape {tuple(t.shape)} != {tuple(truth.shape)}"
    ref_err = _errors(ref_lowp, truth)
    assert not torch.isnan(ref_err).any(), f"{what}: the low-precision reference is NaN where the truth is not"
    ref_max = float(ref_err.max()) if ref_err.numel() else 0.0
    bound = factor * ref_max + floor
    err = _errors(actual, truth)
    bad = ~(err <= bound)
    n = int(bad.sum())
    if n:
        idx = bad.nonzero()[:5].tolist()
        worst = int(torch.nan_to_num(err, nan=float("inf")).flatten().argmax())
        i0 = tuple(idx[0])
        raise AssertionError(
            f"{what}: {n} of {err.numel()} elements exceed {factor:g} x the low-precision reference's "
            f"max error {ref_max:.3g} + floor {floor:.3g} = {bound:.3g} (errors against the float64 "
            f"truth); max abs error {err.max().item():.3g} at flat index {worst}; first bad indices "
            f"{idx}; e.g. actual {actual[i0].item():.9g} vs truth {truth[i0].item():.9g} (reference "
            f"{ref_lowp[i0].item():.9g})")
    return (float(err.max()) if err.numel() else 0.0), bound
