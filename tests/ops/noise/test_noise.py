"""Counter-based noise (docs/math.md Section 1): bit-identical integer streams in every backend and
equal to Triton's own tl.randint4x, the four laws' moments and tails, the layout rules."""
import math

import pytest
import torch

import diffaccel
from diffaccel import reference

from diffaccel.layout import DISTS
from support import LAW_ATOL, assert_close, backend_params  # LAW_ATOL: how far draws may differ


def _random_seeds(rng, n):
    """Seeds over the whole 64-bit range (as int64 bit patterns)."""
    return torch.randint(-(2**63), 2**63 - 1, (n,), generator=rng, dtype=torch.int64)


def test_reference_matches_triton_randint4x(rng):
    """The reference's integers equal tl.randint4x at random 64-bit seeds and offsets."""
    import triton
    import triton.language as tl

    @triton.jit
    def _randint4x_kernel(seed_ptr, off_ptr, out_ptr, N, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < N
        seed = tl.load(seed_ptr + i, mask=m, other=0)
        off = tl.load(off_ptr + i, mask=m, other=0)
        r0, r1, r2, r3 = tl.randint4x(seed, off)
        tl.store(out_ptr + 4 * i, r0.to(tl.int64), mask=m)
        tl.store(out_ptr + 4 * i + 1, r1.to(tl.int64), mask=m)
        tl.store(out_ptr + 4 * i + 2, r2.to(tl.int64), mask=m)
        tl.store(out_ptr + 4 * i + 3, r3.to(tl.int64), mask=m)

    n = 300
    seeds = _random_seeds(rng, n)
    offs = torch.randint(0, 2**62, (n,), generator=rng, dtype=torch.int64)
    offs[:3] = torch.tensor([0, 2**32 - 1, 2**32])
    out = torch.empty(n, 4, dtype=torch.int64)
    _randint4x_kernel[(triton.cdiv(n, 128),)](seeds, offs, out, n, 128)
    ref = torch.stack(reference.philox_uint32(seeds, offs), dim=-1)
    assert torch.equal(out, ref), f"{int((out != ref).sum())} of {out.numel()} integers differ"


def test_known_philox_values():
    """Pinned outputs (seed 0, offset 0/1), so a change to the stream cannot go unnoticed."""
    got = diffaccel.philox_uint32((1, 2), seed=0, backend="reference")
    assert got.tolist() == [[[1713891541, 3781805453, 3159862348, 2600524760],
                             [4175744164, 1555169499, 2980410603, 159317863]]]


@pytest.mark.parametrize("backend,device", backend_params("philox_uint32"))
def test_integer_stream_equals_reference(backend, device, rng):
    B, D = 3, 37
    seeds = _random_seeds(rng, B).to(device)
    for offset in (0, 2**32 - 17, 2**40 + 3):  # includes a wrap of the low counter word
        got = diffaccel.philox_uint32((B, D), seed=seeds, offset=offset, backend=backend)
        ref = diffaccel.philox_uint32((B, D), seed=seeds.cpu(), offset=offset, backend="reference")
        assert torch.equal(got.cpu(), ref), f"offset {offset}: {int((got.cpu() != ref).sum())} differ"
        one = diffaccel.philox_uint32((B, 5, 7), seed=int(seeds[0]), offset=offset, backend=backend)
        ref1 = diffaccel.philox_uint32((B, 5, 7), seed=int(seeds[0]), offset=offset, backend="reference")
        assert torch.equal(one.cpu(), ref1)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("backend,device", backend_params("noise"))
def test_noise_equals_reference(backend, device, dist, rng):
    seeds = _random_seeds(rng, 4).to(device)
    for shape, seed, offset in [((4, 3, 5), seeds, 2**32 - 20), ((7,), 12345, 0),
                                ((1, 1, 7, 5), 2**64 - 1, 2**45)]:
        got = diffaccel.noise(shape, seed=seed, offset=offset, dist=dist, device=device, backend=backend)
        ref = diffaccel.noise(shape, seed=seed.cpu() if torch.is_tensor(seed) else seed, offset=offset,
                              dist=dist, backend="reference")
        assert got.shape == shape and got.dtype == torch.float32
        assert_close(got, ref, atol=LAW_ATOL[dist], what=f"{dist} noise {shape}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,device", backend_params("noise"))
def test_noise_low_precision_is_rounded_float32(backend, device, dtype):
    got = diffaccel.noise((5, 33), seed=7, dtype=dtype, device=device, backend=backend)
    ref = diffaccel.noise((5, 33), seed=7, backend="reference")
    assert got.dtype == dtype
    # the float32 values agree to 4e-6, so the rounded ones agree to one unit in the last place
    assert_close(got.float(), ref.to(dtype).float(), atol=0, rtol=torch.finfo(dtype).eps, what="rounded noise")


def _law_tail(dist):
    """(threshold, exact P(|z| > threshold)) of each unit-variance law."""
    return {"normal": (3.0, math.erfc(3.0 / math.sqrt(2.0))),
            "laplace": (3.0, math.exp(-3.0 * math.sqrt(2.0))),
            "uniform": (1.5, 1.0 - 1.5 / math.sqrt(3.0)),
            "rademacher": (0.5, 1.0)}[dist]


@pytest.mark.parametrize("dist", DISTS)
def test_law_moments_and_tails(dist, rng):
    """10^6 draws: mean 0 and variance 1 within 5 standard errors, the tail mass within 5 sd."""
    n = 10**6
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    z = diffaccel.noise((n,), seed=seed, dist=dist).double()
    kurt = {"normal": 3.0, "laplace": 6.0, "uniform": 1.8, "rademacher": 1.0}[dist]
    assert abs(z.mean().item()) < 5 / math.sqrt(n), f"mean {z.mean().item()}"
    var_tol = 5 * math.sqrt((kurt - 1) / n) + 1e-12
    second = (z * z).mean().item()  # the mean is known (0): E[z^2] = 1 exactly for every law
    assert abs(second - 1) <= var_tol, f"E[z^2] = {second}"
    thr, p = _law_tail(dist)
    frac = (z.abs() > thr).double().mean().item()
    assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, f"P(|z|>{thr}) = {frac}, expected {p}"
    if dist == "uniform":
        assert z.abs().max().item() <= math.sqrt(3.0) + 1e-6
    if dist == "rademacher":
        assert set(z.unique().tolist()) == {-1.0, 1.0}
        assert abs((z > 0).double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(n)


@pytest.mark.parametrize("backend,device", backend_params("noise"))
def test_per_sample_seeds_do_not_depend_on_the_batch(backend, device, rng):
    seeds = _random_seeds(rng, 6).to(device)
    full = diffaccel.noise((6, 2, 9), seed=seeds, offset=11, device=device, backend=backend)
    perm = torch.randperm(6, generator=rng)
    shuffled = diffaccel.noise((6, 2, 9), seed=seeds[perm.to(device)], offset=11, device=device, backend=backend)
    assert torch.equal(shuffled, full[perm.to(device)])
    for b in range(6):
        alone = diffaccel.noise((1, 2, 9), seed=seeds[b:b + 1], offset=11, device=device, backend=backend)
        assert torch.equal(alone[0], full[b])


def test_single_seed_layout_is_flat_offsets():
    """One integer seed: element i of sample b sits at offset + b*D + i, so a (B, D) draw equals
    the flat draw of B*D elements."""
    a = diffaccel.noise((3, 4, 5), seed=99, offset=5)
    b = diffaccel.noise((60,), seed=99, offset=5)
    assert torch.equal(a.flatten(), b)
    c = diffaccel.noise((1, 20), seed=99, offset=5 + 20)
    assert torch.equal(a[1].flatten(), c.flatten())
