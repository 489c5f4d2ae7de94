"""The stroke reference against docs/math.md Section 2 directly: a naive loop for P_k / U_k, the
projection and adjoint identities, gradcheck in float64."""
import pytest
import torch

from diffaccel import reference

from support import assert_close


def naive_project(x, k):
    """S_k x by explicit loops over blocks (partial border blocks average their real size)."""
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    for I in range(0, H, k):
        for J in range(0, W, k):
            blk = x[:, :, I:min(I + k, H), J:min(J + k, W)]
            y[:, :, I:min(I + k, H), J:min(J + k, W)] = blk.mean(dim=(2, 3), keepdim=True)
    return y


def naive_blur(x, w, scales):
    y = (1 - w.sum(1))[:, None, None, None] * x
    for j, k in enumerate(scales):
        y = y + w[:, j, None, None, None] * naive_project(x, k)
    return y


SHAPES = [(1, 1, 7, 5), (2, 3, 9, 4), (1, 2, 16, 16), (2, 1, 5, 13)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_projection_matches_naive_loop(shape, k, rng):
    x = torch.randn(shape, generator=rng, dtype=torch.float64)
    assert_close(reference.stroke_project(x, k), naive_project(x, k), atol=1e-12, what="S_k")


@pytest.mark.parametrize("shape", SHAPES)
def test_blur_matches_naive_loop(shape, rng):
    x = torch.randn(shape, generator=rng, dtype=torch.float64)
    scales = (2, 3, 5)
    w = torch.rand(shape[0], 3, generator=rng, dtype=torch.float64) * 0.3
    assert_close(reference.stroke_blur(x, w, scales), naive_blur(x, w, scales), atol=1e-12, what="A_w")


def test_projection_is_symmetric_idempotent_and_nested(rng):
    x = torch.randn(2, 3, 11, 14, generator=rng, dtype=torch.float64)
    y = torch.randn(2, 3, 11, 14, generator=rng, dtype=torch.float64)
    for k in (2, 3, 4):
        Sx = reference.stroke_project(x, k)
        assert_close(reference.stroke_project(Sx, k), Sx, atol=1e-12, what="idempotent")
        assert abs((Sx * y).sum() - (x * reference.stroke_project(y, k)).sum()) < 1e-9
    # S_{2k} S_k = S_{2k}: one read of a k_max tile yields every level
    assert_close(reference.stroke_project(reference.stroke_project(x, 2), 4),
                 reference.stroke_project(x, 4), atol=1e-12, what="nested")


def test_blur_adjoint_identity(rng):
    x = torch.randn(3, 2, 10, 7, generator=rng, dtype=torch.float64)
    y = torch.randn(3, 2, 10, 7, generator=rng, dtype=torch.float64)
    w = torch.rand(3, 2, generator=rng, dtype=torch.float64) * 0.45
    lhs = (reference.stroke_blur(x, w, (2, 3)) * y).sum()
    rhs = (x * reference.stroke_blur(y, w, (2, 3))).sum()
    assert abs(lhs - rhs) < 1e-9 * (1 + abs(lhs))


def test_blur_gradcheck(rng):
    x = torch.randn(2, 2, 5, 7, generator=rng, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(2, 3, generator=rng, dtype=torch.float64) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: reference.stroke_blur(x, w, (2, 3, 4)), (x, w))


def test_weight_gradient_formula(rng):
    """d/dw_j <A_w x, g> = sum (S_kj x - x) g, the formula the kernels implement."""
    x = torch.randn(2, 3, 9, 6, generator=rng, dtype=torch.float64)
    g = torch.randn(2, 3, 9, 6, generator=rng, dtype=torch.float64)
    w = (torch.rand(2, 2, generator=rng, dtype=torch.float64) * 0.4).requires_grad_()
    (reference.stroke_blur(x, w, (2, 4)) * g).sum().backward()
    expected = torch.stack([((reference.stroke_project(x, k) - x) * g).flatten(1).sum(1) for k in (2, 4)], 1)
    assert_close(w.grad, expected, atol=1e-10, what="grad_w")
