"""The codes, limits and table layouts of diffaccel/layout.py against the C++ values the extension
was built with (``diffaccel._C.layout``, from csrc/include/diffaccel/{common,step,vrg}.h via
csrc/module.cpp): a value changed on one side only fails here instead of giving one backend wrong
numbers."""
import pytest

from diffaccel import _ext, layout

# every constant of layout.py, by name (the tuples of names are checked through their codes)
CONSTANTS = ("NORMAL", "LAPLACE", "UNIFORM", "RADEMACHER", "NO_INCREMENT", "TARGET_EPS",
             "TARGET_X0", "TARGET_V", "VRG_DDIM", "VRG_DPM2M", "MAX_SCALES", "MAX_MODELS",
             "MAX_PROBES", "COEF_AX", "COEF_AZ", "COEF_SX", "COEF_C0", "COEF_C1", "COEF_C2",
             "COEF_C3", "COEF_HEAD", "COEF_PER_MODEL", "Y_BX", "Y_AY", "Y_SY", "Y_CZ", "Y_CN",
             "Y_HEAD")
# the per-model column formulas (k < MAX_MODELS) and the table widths (K <= MAX_MODELS)
COLUMNS = ("coef_am", "coef_sm", "coef_cw", "y_bm")
WIDTHS = ("coef_width", "y_width")


@pytest.fixture(scope="module")
def cpp():
    mod = _ext.load()
    if mod is None:
        pytest.skip(_ext.error())
    return mod.layout


def test_every_name_exported(cpp):
    """The C++ side exports exactly the names checked here, and they cover layout.__all__ (the
    name tuples DISTS, TARGETS, VRG_SOLVERS aside)."""
    assert set(cpp) == set(CONSTANTS + COLUMNS + WIDTHS)
    assert set(layout.__all__) - {"DISTS", "TARGETS", "VRG_SOLVERS"} == set(cpp)


@pytest.mark.parametrize("name", CONSTANTS)
def test_constant(cpp, name):
    assert cpp[name] == getattr(layout, name), name


@pytest.mark.parametrize("name", COLUMNS + WIDTHS)
def test_formula(cpp, name):
    n = layout.MAX_MODELS + (1 if name in WIDTHS else 0)
    assert tuple(cpp[name]) == tuple(getattr(layout, name)(k) for k in range(n)), name


def test_code_tables(cpp):
    """The names of the codes in the order of their values, with no gaps."""
    assert [cpp[n] for n in ("NORMAL", "LAPLACE", "UNIFORM", "RADEMACHER")] == \
        list(range(len(layout.DISTS)))
    assert [cpp[n] for n in ("TARGET_EPS", "TARGET_X0", "TARGET_V")] == \
        list(range(len(layout.TARGETS)))
    assert [cpp[n] for n in ("VRG_DDIM", "VRG_DPM2M")] == list(range(len(layout.VRG_SOLVERS)))
    assert cpp["NO_INCREMENT"] not in range(len(layout.DISTS))
