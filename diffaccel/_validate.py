"""Argument checks of the public API: every bad input gets a ValueError or TypeError that names
the argument and says what was expected. Checks that read tensor values (finiteness, weight
ranges) run in eager mode only, so compiled graphs have no host synchronization."""
import numbers

import torch

from .library import DISTS, TARGETS

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SCALES = 8


def eager():
    return not torch.compiler.is_compiling()


def image(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES + (torch.float64,):
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {x.dtype}")
    return x


def fast_dtype(x, name, backend):
    if x.dtype == torch.float64 and backend != "reference":
        raise TypeError(f"{name}: float64 is supported by the reference backend only "
                        f"(backend {backend!r} computes in float32)")


def scales(value):
    if isinstance(value, numbers.Integral):
        value = (value,)
    try:
        ks = tuple(value)
    except TypeError:
        raise TypeError(f"scales: expected a tuple of ints, got {type(value).__name__}") from None
    if not 1 <= len(ks) <= MAX_SCALES:
        raise ValueError(f"scales: expected 1 to {MAX_SCALES} scales, got {len(ks)}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"scales: expected ints, got {k!r}")
        if k < 2:
            raise ValueError(f"scales: every scale must be >= 2, got {k}")
    return tuple(int(k) for k in ks)


def weights(w, x, J, name):
    """(B, J) float32 weights on x's device (a (J,) tensor or list is shared by the batch)."""
    B = x.shape[0]
    if not isinstance(w, torch.Tensor):
        try:
            w = torch.tensor(w, dtype=torch.float32, device=x.device)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected a tensor of shape ({B}, {J}), got {type(w).__name__}") from None
    if w.device != x.device:
        raise ValueError(f"{name}: expected a tensor on {x.device}, got {w.device}")
    if not w.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {w.dtype}")
    if w.dim() == 1 and w.shape[0] == J:
        w = w.expand(B, J)
    if tuple(w.shape) != (B, J):
        raise ValueError(f"{name}: expected shape ({B}, {J}) (one weight per sample and scale), "
                         f"got {tuple(w.shape)}")
    if eager():
        wd = w.detach()
        if not bool(torch.isfinite(wd).all()):
            raise ValueError(f"{name}: weights must be finite")
        if bool((wd < 0).any()):
            raise ValueError(f"{name}: weights must be >= 0, got min {wd.min().item():.4g}")
        if B and bool((wd.sum(1) >= 1).any()):
            raise ValueError(f"{name}: each sample's weights must sum to < 1, got max sum "
                             f"{wd.sum(1).max().item():.4g}")
    return w if w.dtype == torch.float64 else w.to(torch.float32)


def per_sample(v, x, name):
    """(B,) float32 per-sample scalar from a number, a 0-d tensor or a (B,) tensor."""
    B = x.shape[0]
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        v = torch.full((B,), float(v), dtype=torch.float32, device=x.device)
    elif isinstance(v, torch.Tensor):
        if v.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device}, got {v.device}")
        if not v.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {v.dtype}")
        if v.dim() == 0:
            v = v.expand(B)
        if tuple(v.shape) != (B,):
            raise ValueError(f"{name}: expected a number or a tensor of shape ({B},), got {tuple(v.shape)}")
    else:
        raise TypeError(f"{name}: expected a number or a tensor, got {type(v).__name__}")
    if eager() and not bool(torch.isfinite(v.detach()).all()):
        raise ValueError(f"{name}: expected finite values")
    return v if v.dtype == torch.float64 else v.to(torch.float32)


def seeds(seed, B, device):
    """int64 seeds on ``device``: (1,) for one integer seed, (B,) for one seed per sample."""
    if isinstance(seed, bool) or seed is None:
        raise TypeError(f"seed: expected an int or an integer tensor of shape ({B},), got {seed!r}")
    if isinstance(seed, numbers.Integral):
        s = int(seed)
        if not -(2**63) <= s < 2**64:
            raise ValueError(f"seed: expected a 64-bit integer, got {s}")
        if s >= 2**63:
            s -= 2**64  # same bits as the uint64
        return torch.full((1,), s, dtype=torch.int64, device=device)  # a fill: no host copy
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise TypeError(f"seed: expected an integer tensor, got {seed.dtype}")
        if seed.dim() == 0:
            seed = seed.reshape(1)
        if seed.dim() != 1 or seed.shape[0] not in (1, B):
            raise ValueError(f"seed: expected shape (1,) or ({B},), got {tuple(seed.shape)}")
        return seed.to(device=device, dtype=torch.int64)
    raise TypeError(f"seed: expected an int or an integer tensor, got {type(seed).__name__}")


def offset(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"offset: expected an int, got {type(value).__name__}")
    if not 0 <= value < 2**63:
        raise ValueError(f"offset: expected 0 <= offset < 2**63, got {value}")
    return int(value)


def choice(value, options, name):
    if value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return options.index(value)


def dist(value):
    return choice(value, DISTS, "dist")


def target(value):
    return choice(value, TARGETS, "target")
