"""Launch plans of the CUDA stroke kernels' general path, checked without a GPU through
``diffaccel._C.launch_stroke_means`` (csrc/include/diffaccel/launch_grid.h).

The block-mean kernels run one warp (32 threads) per block mean. Their 32-bit index instantiation
used to be picked from the element and block-mean counts alone, so from 2^27 block means the
thread index ``blockIdx.x * blockDim.x`` and the stride ``gridDim.x * blockDim.x`` wrapped modulo
2^32; at an exact multiple of 2^27 block means the stride was 0 and the kernel never returned
(``stroke_blur`` backward on (128, 4, 1024, 1024) with scales (2,))."""
import math

import pytest

from diffaccel import _ext

LIM = 2 ** 31


def _C():
    mod = _ext.load()
    if mod is None:
        pytest.skip(_ext.error())
    return mod


def _total(H, W, scales):
    return sum(math.ceil(H / k) * math.ceil(W / k) for k in scales)


def _check(C, B, Ch, H, W, scales):
    BC, total = B * Ch, _total(H, W, scales)
    n = BC * total
    blocks, idx64 = C.launch_stroke_means(BC, H, W, total)
    threads = C.launch_threads
    warps = blocks * threads // 32
    where = f"(B, C, H, W) = {(B, Ch, H, W)}, scales {scales}: n = {n}, blocks {blocks}, idx64 {idx64}"
    assert 1 <= blocks < 2 ** 32, where
    assert warps >= 1 and warps - n < threads // 32, where  # no block without a block mean
    if not idx64:
        # every index the 32-bit kernel computes stays below 2^31: elements, block means, the
        # thread index and the grid stride (so t + stride cannot wrap either)
        assert BC * H * W < LIM and n < LIM, where
        assert blocks * threads <= LIM, where
        stride = (blocks * threads) % 2 ** 32 // 32  # what the uint32 kernel computes
        assert stride == warps and stride > 0, where
    else:
        assert blocks * threads < 2 ** 64, where
    return blocks, idx64


@pytest.mark.parametrize("shape,scales", [
    ((128, 4, 1024, 1024), (2,)),          # n = 2^27 exactly: the stride was 0 (a hang)
    ((16, 4, 1024, 1024), (2,) * 8),       # n = 2^27 over eight scales
    ((128, 4, 1536, 1536), (3,)),          # a forward general-path shape past 2^27
    ((64, 4, 1024, 1024), (2,)),           # n = 2^26: below the wrap
    ((255, 4, 1024, 1024), (2,)),          # n just under 2^28, elements just under 2^31
    ((256, 4, 1024, 1024), (2,)),          # 2^31 elements: the 64-bit path
    ((1, 1, 1, 1), (2,)),
    ((3, 4, 33, 17), (3, 5)),
])
def test_block_mean_launch_never_wraps_a_32bit_index(shape, scales):
    _check(_C(), *shape, scales)


def test_block_mean_launch_over_many_sizes():
    """Every n of the form 2^e +- small and random shapes up to 2^31 elements."""
    C = _C()
    import random

    rnd = random.Random(19)
    for e in range(0, 31):
        for d in (-8, -1, 0, 1, 8):
            n = max(1, 2 ** e + d)
            # a single plane of n pixels with one scale of 1 x 1 blocks has n block means
            blocks, idx64 = C.launch_stroke_means(1, 1, n, n)
            assert idx64 == (n >= LIM)
            assert blocks * C.launch_threads <= LIM or idx64, (n, blocks)
    for _ in range(2000):
        B, Ch = rnd.randint(1, 512), rnd.randint(1, 8)
        H, W = rnd.randint(1, 4096), rnd.randint(1, 4096)
        if B * Ch * H * W > 2 ** 33:
            continue
        scales = tuple(rnd.choice((2, 3, 4, 5, 8, 16, 32, 64, 100)) for _ in range(rnd.randint(1, 8)))
        _check(C, B, Ch, H, W, scales)
