"""The demo's data: scikit-learn's 8x8 handwritten digits (1797 images, shipped inside
scikit-learn, no download), at their native 8x8 resolution.

Why 8x8 and not resampled to 16x16: a resampled image is a linear function of its 64 original
pixels, so the 16x16 images would lie on a 64-dimensional subspace of R^256 and a density on
R^256 (and its bits per dimension) would be meaningless. At 8x8 every dimension is real data,
and a small network trains in minutes on two CPU cores.

Pixels are integers 0..16 (17 levels); the model sees ``x = v / 8 - 1`` in [-1, 1].
"""
import math

import torch

LEVELS = 17          # pixel values 0..16
PIXEL_SCALE = 8.0    # x = v / PIXEL_SCALE - 1
SPLIT_SEED = 0
HELD_OUT = 297       # 1797 = 1500 train + 297 held-out


def load_digits_split(seed=SPLIT_SEED, held_out=HELD_OUT):
    """``(x_train, y_train, x_test, y_test)``: (N, 1, 8, 8) float32 images in [-1, 1] and int64
    labels, split by a fixed random permutation (``seed``) so every run sees the same sets."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / PIXEL_SCALE - 1
    y = torch.tensor(d.target, dtype=torch.int64)
    if isinstance(held_out, bool) or not isinstance(held_out, int) or not 0 < held_out < len(x):
        raise ValueError(f"held_out: expected an int in (0, {len(x)}), got {held_out!r}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:held_out], perm[held_out:]
    return x[train], y[train], x[test], y[test]


def dequantize(x, generator=None):
    """Uniform dequantization: pixel value v becomes v + u - 1/2, u ~ U(0, 1), i.e. a uniform
    point of the level's bin of width 1/PIXEL_SCALE around x. Then
    ``-log P(v) <= E_u[-log p(x + u')] ``, so a density's bits per dimension on the dequantized
    data (in pixel units, see :func:`discrete_bits_per_dim`) bound the discrete model's."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype) - 0.5
    return x + u.to(x.device) / PIXEL_SCALE


def discrete_bits_per_dim(logp, dim):
    """Bits per dimension of the 17-level pixels from a log-density of dequantized model-space
    data (``x = v / PIXEL_SCALE - 1``: one pixel unit is 1 / PIXEL_SCALE in model space).
    The uniform distribution over 17 levels is log2(17) = 4.09 bits per dimension."""
    from ..sampling import bits_per_dim

    return bits_per_dim(logp, dim, pixel_scale=PIXEL_SCALE)


UNIFORM_BITS = math.log2(LEVELS)
