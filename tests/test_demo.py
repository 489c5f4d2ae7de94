"""`python -m diffaccel demo` end to end (--quick), and the demo's helpers: data split,
dequantization, metrics, the training helper and the shipped weights."""
import math
import os
import re
import struct
import subprocess
import sys
import zlib

import pytest
import torch

for _mod in ("diffusers", "sklearn", "matplotlib", "safetensors"):
    pytest.importorskip(_mod, reason="the demo extra (pip install --no-build-isolation '.[demo]') is not installed")

import diffaccel  # noqa: E402
from diffaccel.demo import data as D  # noqa: E402
from diffaccel.demo import metrics as M  # noqa: E402
from diffaccel.demo import train as T  # noqa: E402

from support import ROOT  # noqa: E402


# ------------------------------------------------------------------ the whole demo, --quick

def _png_ok(path):
    """A valid PNG: signature, then chunks whose CRCs match, IHDR first, IEND last."""
    with open(path, "rb") as f:
        b = f.read()
    if b[:8] != b"\x89PNG\r\n\x1a\n":
        return "bad signature"
    pos, names = 8, []
    while pos < len(b):
        if pos + 8 > len(b):
            return "truncated chunk header"
        n, name = struct.unpack(">I4s", b[pos:pos + 8])
        body = b[pos + 8:pos + 8 + n]
        crc = b[pos + 8 + n:pos + 12 + n]
        if len(body) != n or len(crc) != 4 or zlib.crc32(name + body) != struct.unpack(">I", crc)[0]:
            return f"bad chunk {name!r}"
        names.append(name)
        pos += 12 + n
    if not names or names[0] != b"IHDR" or names[-1] != b"IEND" or b"IDAT" not in names:
        return f"chunks {names}"
    w, h = struct.unpack(">II", b[16:24])
    return None if w > 0 and h > 0 else "empty image"


NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def test_demo_quick_writes_a_complete_report(tmp_path):
    out = tmp_path / "rep"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    # one thread: robust when other jobs share the cores (two threads then wait on each other)
    r = subprocess.run([sys.executable, "-m", "diffaccel", "demo", "--quick", "--device", "cpu", "--threads", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert str(out) in r.stdout, "the printed summary must name the report folder"
    text = (out / "report.md").read_text()
    # every picture the report names exists and is a valid PNG, and every PNG is named
    pics = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(pics) >= 10, pics
    for p in pics:
        assert (out / p).is_file(), f"report names {p}, which is missing"
        assert _png_ok(out / p) is None, f"{p}: {_png_ok(out / p)}"
    assert sorted(set(pics)) == sorted(f for f in os.listdir(out) if f.endswith(".png"))
    # every section is there
    for title in ("Stroke size", "VRG", "Likelihood", "Non-normal increments", "Schedules",
                  "Microbenchmark", "Summary"):
        assert title in text, title
    # every number parses and is finite; nothing is written as n/a, nan or inf
    assert not re.search(r"\b(nan|inf|infinity)\b|n/a", text, re.IGNORECASE), \
        [ln for ln in text.splitlines() if re.search(r"\b(nan|inf)\b|n/a", ln, re.IGNORECASE)]
    numbers = [float(m) for m in NUMBER.findall(text)]
    assert len(numbers) > 100 and all(math.isfinite(v) for v in numbers)
    # table cells that look numeric parse whole
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            for cell in line.strip("|").split("|"):
                c = cell.strip()
                if re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", c):
                    assert math.isfinite(float(c)), line


# ------------------------------------------------------------------ data

def test_digits_split_is_fixed_disjoint_and_scaled():
    a = D.load_digits_split()
    b = D.load_digits_split()
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    x_tr, y_tr, x_te, y_te = a
    assert x_tr.shape == (1500, 1, 8, 8) and x_te.shape == (D.HELD_OUT, 1, 8, 8)
    assert y_tr.shape == (1500,) and y_te.shape == (D.HELD_OUT,)
    assert x_tr.min() == -1 and x_tr.max() == 1
    levels = (x_tr + 1) * D.PIXEL_SCALE
    assert torch.equal(levels, levels.round())
    # disjoint: no held-out image appears in the train split under the same index set; the
    # split is a permutation, so the sizes add up and a different seed gives another split
    assert len(x_tr) + len(x_te) == 1797
    assert not torch.equal(D.load_digits_split(seed=1)[2], x_te)
    with pytest.raises(ValueError, match="held_out"):
        D.load_digits_split(held_out=0)


def test_dequantize_stays_in_the_pixel_bin_and_uniform_density_gives_log2_17():
    x = D.load_digits_split()[2]
    xq = D.dequantize(x, generator=torch.Generator().manual_seed(0))
    assert ((xq - x).abs() <= 0.5 / D.PIXEL_SCALE).all()
    assert (xq - x).std() > 0.2 / D.PIXEL_SCALE  # really spread over the bin
    # the uniform density over the 17 bins: width 17 / PIXEL_SCALE per dimension
    logp = torch.full((3,), -64 * math.log(D.LEVELS / D.PIXEL_SCALE), dtype=torch.float64)
    bpd = D.discrete_bits_per_dim(logp, 64)
    assert torch.allclose(bpd, torch.full_like(bpd, D.UNIFORM_BITS), atol=1e-12)


# ------------------------------------------------------------------ metrics

def test_wasserstein_1d_exact_for_unequal_sizes(rng):
    n, m = 5, 7
    a = torch.randn(3, n, generator=rng, dtype=torch.float64)
    b = torch.randn(3, m, generator=rng, dtype=torch.float64) + 0.5
    # brute force: repeat each point to a common size lcm(n, m); then W2 is the sorted match
    L = n * m // math.gcd(n, m)
    aa = torch.sort(a.repeat_interleave(L // n, 1), 1).values
    bb = torch.sort(b.repeat_interleave(L // m, 1), 1).values
    want = ((aa - bb) ** 2).mean(1).sqrt()
    got = M.wasserstein_1d(a, b)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), (got, want)
    assert torch.allclose(M.wasserstein_1d(torch.tensor([[0.0, 1.0]]).double(),
                                           torch.tensor([[0.0, 0.5, 1.0]]).double()),
                          torch.tensor([math.sqrt(1 / 12)]).double())


def test_sliced_wasserstein_zero_shift_and_symmetry(rng):
    x = torch.randn(200, 1, 2, 2, generator=rng)
    assert M.sliced_wasserstein(x, x) == 0
    shift = torch.tensor([3.0, -1.0, 2.0, 0.5]).reshape(1, 1, 2, 2)
    # a pure shift moves every projection by theta.m: SW^2 = mean (theta.m)^2 -> |m|^2 / D
    sw = M.sliced_wasserstein(x, x + shift, projections=4096, seed=1)
    want = float(shift.norm()) / 2
    assert abs(sw - want) < 0.08 * want, (sw, want)
    y = torch.randn(150, 1, 2, 2, generator=rng) * 2
    assert abs(M.sliced_wasserstein(x, y, seed=3) - M.sliced_wasserstein(y, x, seed=3)) < 1e-12
    with pytest.raises(ValueError, match="y"):
        M.sliced_wasserstein(x, torch.randn(10, 5))
    with pytest.raises(ValueError, match="x"):
        M.sliced_wasserstein(x * float("nan"), y)
    with pytest.raises(ValueError, match="projections"):
        M.sliced_wasserstein(x, y, projections=0)


def test_total_variation():
    assert torch.equal(M.total_variation(torch.ones(2, 1, 4, 4)), torch.zeros(2, dtype=torch.float64))
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    board = (((i + j) % 2) * 2 - 1).float().reshape(1, 1, 4, 4)
    assert torch.allclose(M.total_variation(board), torch.tensor([2.0]).double())
    # stripes (3 x 5): only the 2 x 5 vertical neighbour pairs differ (by 2), not the 3 x 4
    # horizontal ones: TV = 2 * 10 / (10 + 12)
    stripes = ((torch.arange(3) % 2) * 2 - 1).float().reshape(1, 1, 3, 1).expand(2, 1, 3, 5)
    assert torch.allclose(M.total_variation(stripes), torch.full((2,), 20 / 22).double())
    with pytest.raises(ValueError, match="x"):
        M.total_variation(torch.ones(4, 4))


def test_digit_classifier_judges_real_digits_and_degenerate_sets():
    x_tr, y_tr, x_te, y_te = D.load_digits_split()
    clf = M.DigitClassifier(x_tr, y_tr)
    assert clf.accuracy(x_te, y_te) > 0.9
    j = clf.judge(x_te)
    assert j["confidence"] > 0.7 and j["label_entropy"] > 3.1
    assert M.DigitClassifier(x_tr, y_tr).judge(x_te) == j  # deterministic
    same = clf.judge(x_te[:1].expand(20, -1, -1, -1))
    assert same["label_entropy"] == 0
    with pytest.raises(ValueError, match="x"):
        clf.judge(torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match="y_train"):
        M.DigitClassifier(x_tr, y_tr[:-1])


# ------------------------------------------------------------------ training helper and weights

def test_noised_plain_is_the_ddpm_noising_and_stroke_uses_the_default_weights():
    x0 = D.load_digits_split()[2][:6]
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    abar = T.make_scheduler().alphas_cumprod.double()[t]
    seeds = torch.arange(6) + 5
    xt, eps = T.noised("plain", x0, t, seeds)
    want_eps = diffaccel.noise(tuple(x0.shape), seed=seeds)
    a = abar.float().view(-1, 1, 1, 1)
    assert torch.allclose(eps, want_eps, atol=1e-6)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * want_eps, atol=1e-5)
    w = T.stroke_weights_for("stroke", abar)
    lam = (abar.log() - torch.log1p(-abar)).float()
    assert torch.allclose(w, diffaccel.stroke_weights(lam, T.SCALES), atol=1e-6)
    assert w[-1].sum() > 0.4 and w[0].sum() < 0.01  # coarse at low SNR, almost none at high SNR
    assert torch.equal(T.stroke_weights_for("plain", abar), torch.zeros(6, len(T.SCALES)))
    xs, target = T.noised("stroke", x0, t, seeds)
    blur = diffaccel.stroke_blur(want_eps, w, T.SCALES)
    assert torch.allclose(target, blur, atol=1e-5)
    assert torch.allclose(xs, a.sqrt() * diffaccel.stroke_blur(x0, w, T.SCALES) + (1 - a).sqrt() * blur,
                          atol=1e-5)
    with pytest.raises(ValueError, match="kind"):
        T.noised("blurry", x0, t, seeds)


def test_train_runs_deterministically_and_weights_round_trip(tmp_path):
    x = D.load_digits_split()[0][:64]
    m1, l1 = T.train("stroke", x, steps=3, batch=8, progress=False)
    m2, l2 = T.train("stroke", x, steps=3, batch=8, progress=False)
    assert len(l1) == 3 and all(math.isfinite(v) for v in l1)
    assert l1 == l2
    path = tmp_path / "w.safetensors"
    T.save(m1, str(path), metadata={"kind": "stroke"})
    back = T.load(str(path))
    xt = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 300, 600, 999])
    with torch.no_grad():
        a, b = m1(xt, t).sample, back(xt, t).sample
    # float16 weights: outputs move by about the float16 rounding of the parameters
    assert (a - b).abs().max() < 0.05 * a.abs().max(), (a - b).abs().max()
    with pytest.raises(ValueError, match="kind"):
        T.train("other", x, steps=1)
    with pytest.raises(ValueError, match="steps"):
        T.train("plain", x, steps=0)
    with pytest.raises(ValueError, match="x_train"):
        T.train("plain", x[0], steps=1)
    with pytest.raises(FileNotFoundError, match="retrain"):
        T.load(str(tmp_path / "none.safetensors"))


def test_shipped_weights_are_small_and_load():
    for kind in T.KINDS:
        path = T.weights_path(kind)
        assert os.path.getsize(path) < 2 * 2 ** 20, path
        model = T.load(path)
        with torch.no_grad():
            out = model(torch.randn(2, 1, 8, 8), torch.tensor([10, 900])).sample
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_report_formatting_and_grid(tmp_path):
    from diffaccel.demo.report import Report, fmt, image_grid

    assert fmt(float("nan")) == "n/a" and fmt(float("inf")) == "n/a" and fmt(None) == "n/a"
    assert fmt(0) == "0" and fmt(0.123456) == "0.1235" and fmt(-2.5e-5) == "-2.500e-05"
    assert float(fmt(123456.0)) == 123500.0
    g = image_grid(torch.linspace(-2, 2, 5 * 64).reshape(5, 1, 8, 8), cols=3)
    assert g.shape == (2 * 9 + 1, 3 * 9 + 1) and g.dtype.name == "uint8"
    assert g[1:9, 1:9].min() == 0 and g[10:18, 10:18].max() == 255  # clamped to [-1, 1]
    r = Report(tmp_path)
    r.h("T")
    r.table(["a", "b"], [["x", 1.5], ["y", float("nan")]])
    text = open(r.write()).read()
    assert "| x | 1.5 |" in text and "| y | n/a |" in text
