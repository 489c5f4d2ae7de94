"""diffaccel.integrations.k_diffusion.patch() on the real k_diffusion/sampling.py (registered as
``k_diffusion.sampling`` with its parent package stubbed) and on a copy under another name (the
vendored-copy case, as ComfyUI's ``comfy.k_diffusion.sampling``)."""
import inspect
import sys

import pytest
import torch

import diffaccel.schedules as sch
from support import kdiffusion_real as R
from support import assert_close
from diffaccel.integrations import k_diffusion as kdp
from diffaccel.models import GaussianMixture

pytestmark = [pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def registered():
    """The real sampling.py as sys.modules['k_diffusion.sampling'] for one test."""
    mod = R.load(register=True)
    yield mod
    kdp.unpatch(mod)
    R.unregister(mod)


def _problem(rng, B=3, shape=(2, 5)):
    gm = GaussianMixture(torch.randn(3, *shape, generator=rng, dtype=torch.float64) * 2,
                         torch.rand(3, generator=rng) + 0.5, 0.4)
    return gm, torch.randn(B, *shape, generator=rng) * 10, sch.karras_sigmas(6, 0.1, 10.0).float()


def _draws(mod, fn, *args, seed, **kw):
    rec = R.RecordingTorch(seed)
    mod.torch = rec  # as stable-diffusion-webui's TorchHijack
    try:
        torch.manual_seed(seed)
        return fn(*args, **kw), len(rec.calls)
    finally:
        mod.torch = torch


def _check_patched(mod, originals, rng):
    gm, x, sigmas = _problem(rng)
    for name in kdp.NAMES:
        new, old = getattr(mod, name), originals[name]
        assert new is not old and kdp.is_patched(mod, name), name
        assert new.__name__ == old.__name__ and new.__doc__ == old.__doc__, name
        assert new.__module__ == old.__module__ == mod.__name__, name
        assert inspect.signature(new) == inspect.signature(old), name
        s = int(torch.randint(0, 2 ** 31, (), generator=rng))
        want, n_want = _draws(mod, old, gm, x, sigmas, disable=True, seed=s)
        got, n_got = _draws(mod, new, gm, x, sigmas, disable=True, seed=s)
        assert_close(got, want, atol=2e-5 * (float(want.abs().max()) + 1), rtol=1e-5, what=name)
        assert n_got == n_want, f"{name}: {n_got} draws through {mod.__name__}.torch, original {n_want}"


def test_patch_default_module(registered, rng):
    mod = registered
    originals = {n: getattr(mod, n) for n in kdp.NAMES}
    handle = kdp.patch()
    assert handle.module is mod and sorted(handle.originals) == sorted(kdp.NAMES)
    kdp.patch()  # twice: still one layer
    assert all(getattr(mod, n)._diffaccel_original is originals[n] for n in kdp.NAMES)
    _check_patched(mod, originals, rng)
    # the extras are keyword-only arguments of the replacements
    gm, x, sigmas = _problem(rng)
    a = mod.sample_dpmpp_2m_sde(gm, x, sigmas, disable=True, seed=torch.tensor([1, 2, 3]))
    b = mod.sample_dpmpp_2m_sde(gm, x[1:], sigmas, disable=True, seed=torch.tensor([2, 3]))
    assert_close(b, a[1:], atol=1e-5, rtol=1e-5, what="per-sample seeds through the patch")
    assert sorted(kdp.unpatch()) == sorted(kdp.NAMES)
    assert all(getattr(mod, n) is originals[n] for n in kdp.NAMES)
    assert kdp.unpatch() == []


def test_context_manager_and_names(registered, rng):
    mod = registered
    orig = mod.sample_euler_ancestral
    with kdp.patch("k_diffusion.sampling", names=["sample_euler_ancestral"]) as m:
        assert m is mod and kdp.is_patched(mod, "sample_euler_ancestral")
        assert not kdp.is_patched(mod, "sample_heun")
    assert mod.sample_euler_ancestral is orig
    with pytest.raises(ValueError, match="names"):
        kdp.patch(mod, names=["sample_dpm_fast"])


def test_patch_a_vendored_copy(rng):
    """A copy of sampling.py under another package name: patched in place, noise drawn through
    the copy's own globals, k_diffusion.sampling untouched."""
    vend = R.load("vendored_kd")
    other = R.load()
    assert vend.__name__ == "vendored_kd.sampling"
    originals = {n: getattr(vend, n) for n in kdp.NAMES}
    with kdp.patch(vend):
        _check_patched(vend, originals, rng)
        assert not any(kdp.is_patched(other, n) for n in kdp.NAMES)
        gm, x, sigmas = _problem(rng)
        _, n_other = _draws(other, vend.sample_euler, gm, x, sigmas, disable=True, seed=1)
        assert n_other == 0  # the copy's replacement never looks at the other module
    assert all(getattr(vend, n) is originals[n] for n in kdp.NAMES)


def test_lazy_import_and_missing_package(monkeypatch):
    """Importing the integration imports no k-diffusion; patch() without one says what to do."""
    assert "k_diffusion" not in sys.modules and "k_diffusion.sampling" not in sys.modules
    monkeypatch.setitem(sys.modules, "k_diffusion", None)
    with pytest.raises(ImportError, match="module: cannot import k_diffusion.sampling"):
        kdp.patch()
