"""Codes, limits and table layouts shared by every backend: defined here once for Python.

The C++ side has the same values in ``csrc/include/diffaccel/{common,step,vrg}.h``; the extension
exports them as ``diffaccel._C.layout`` and a test compares the two, so a drift fails a test
instead of giving one backend wrong numbers. This module imports nothing from diffaccel: the
reference, the Triton kernels (as constexprs), the integrations, the samplers and the tests all
read it.

Integer codes (the ``int`` arguments of the ``torch.ops.diffaccel`` schemas):

- increment laws (docs/math.md Sections 1, 3.4): ``DISTS[code]``; ``NO_INCREMENT`` (-1): z = 0;
- stroke-noise targets (Section 2): ``TARGETS[code]``;
- VRG solvers (Section 5): ``VRG_SOLVERS[code]``.

The fused step's coefficient table (``coef``, a (B, coef_width(K)) tensor, Section 3.1)::

    columns COEF_AX .. COEF_C3 (0..6):   ax, az, sx, c0, c1, c2, c3
    model k:  coef_am(k), coef_sm(k), coef_cw(k)  =  COEF_HEAD + COEF_PER_MODEL k + (0, 1, 2)

and its optional y line (``ycoef``, a (B, y_width(K)) tensor)::

    columns Y_BX .. Y_CN (0..4):  bx, ay, sy, cz, cn;   model k:  y_bm(k) = Y_HEAD + k
"""

# ------------------------------------------------------------------------------ integer codes
DISTS = ("normal", "laplace", "uniform", "rademacher")
NORMAL, LAPLACE, UNIFORM, RADEMACHER = range(4)
NO_INCREMENT = -1  # dist code of the fused step: no increment (z = 0)

TARGETS = ("eps", "x0", "v")
TARGET_EPS, TARGET_X0, TARGET_V = range(3)

VRG_SOLVERS = ("ddim", "dpm2m")
VRG_DDIM, VRG_DPM2M = range(2)

# ------------------------------------------------------------------------------------ limits
MAX_SCALES = 8  # stroke scales per op
MAX_MODELS = 8  # model outputs (K) per fused step
MAX_PROBES = 64  # Hutchinson probes (P, P') per fused step

# ------------------------------------------------------------------ fused step: coef columns
COEF_AX, COEF_AZ, COEF_SX, COEF_C0, COEF_C1, COEF_C2, COEF_C3 = range(7)
COEF_HEAD = 7  # the columns above; then COEF_PER_MODEL per model output
COEF_PER_MODEL = 3  # am_k, sm_k, cw_k


def coef_am(k):
    """Column of am_k (model k's weight in x_new)."""
    return COEF_HEAD + COEF_PER_MODEL * k


def coef_sm(k):
    """Column of sm_k (model k's weight in the score)."""
    return COEF_HEAD + COEF_PER_MODEL * k + 1


def coef_cw(k):
    """Column of cw_k (model k's weight in the Hutchinson trace)."""
    return COEF_HEAD + COEF_PER_MODEL * k + 2


def coef_width(K):
    """Columns of a coefficient table for K model outputs."""
    return COEF_HEAD + COEF_PER_MODEL * K


# -------------------------------------------------------------- fused step: y-line columns
Y_BX, Y_AY, Y_SY, Y_CZ, Y_CN = range(5)
Y_HEAD = 5  # the columns above; then bm_k, one per model output


def y_bm(k):
    """Column of bm_k (model k's weight in y)."""
    return Y_HEAD + k


def y_width(K):
    """Columns of a y-line table for K model outputs."""
    return Y_HEAD + K


__all__ = ["DISTS", "NORMAL", "LAPLACE", "UNIFORM", "RADEMACHER", "NO_INCREMENT", "TARGETS",
           "TARGET_EPS", "TARGET_X0", "TARGET_V", "VRG_SOLVERS", "VRG_DDIM", "VRG_DPM2M",
           "MAX_SCALES", "MAX_MODELS", "MAX_PROBES", "COEF_AX", "COEF_AZ", "COEF_SX", "COEF_C0",
           "COEF_C1", "COEF_C2", "COEF_C3", "COEF_HEAD", "COEF_PER_MODEL", "coef_am", "coef_sm",
           "coef_cw", "coef_width", "Y_BX", "Y_AY", "Y_SY", "Y_CZ", "Y_CN", "Y_HEAD", "y_bm",
           "y_width"]
