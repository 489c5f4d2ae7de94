"""Argument checks of the public API: every bad input gets a ValueError or TypeError that names
the argument and says what was expected. Checks that read tensor values (finiteness, weight
ranges) run in eager mode only, and not while a CUDA graph is being captured, so compiled graphs
and captured graphs have no host synchronization (each such check reads one boolean)."""
import numbers

import torch

from .backends import requested, select
from .layout import DISTS, MAX_SCALES, TARGETS

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def eager():
    """True when value checks may read tensors on the host: not while torch.compile traces,
    and not while a CUDA stream is capturing a graph (a host read there is an error)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


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


def pick_backend(backend, x, name, op):
    """The backend that runs ``op`` on ``x``: float64 under ``auto`` runs on the reference (the
    only backend that computes in float64); a backend named explicitly refuses float64."""
    if x.dtype == torch.float64 and requested(backend) == "auto":
        return "reference"
    chosen = select(backend, x.device, op)
    fast_dtype(x, name, chosen)
    return chosen


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
        sums = wd.sum(1)
        # one host read for the three checks; the details only when one fails
        bad = ~torch.isfinite(wd).all() | (wd < 0).any() | (sums >= 1).any()
        if not bool(bad):
            return w if w.dtype == torch.float64 else w.to(torch.float32)
        if not bool(torch.isfinite(wd).all()):
            raise ValueError(f"{name}: weights must be finite")
        if bool((wd < 0).any()):
            raise ValueError(f"{name}: weights must be >= 0, got min {wd.min().item():.4g}")
        if B and bool((wd.sum(1) >= 1).any()):
            raise ValueError(f"{name}: each sample's weights must sum to < 1, got max sum "
                             f"{wd.sum(1).max().item():.4g}")
    return w if w.dtype == torch.float64 else w.to(torch.float32)


def per_sample(v, x, name, *, nonneg=False):
    """(B,) float32 per-sample scalar from a number, a 0-d tensor or a (B,) tensor (finite;
    ``nonneg``: also >= 0; both checked in eager mode only)."""
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
    if eager():
        if not bool(torch.isfinite(v.detach()).all()):
            raise ValueError(f"{name}: expected finite values")
        if nonneg and bool((v.detach() < 0).any()):
            raise ValueError(f"{name}: expected values >= 0, got min {v.detach().min().item():.4g}")
    return v if v.dtype == torch.float64 else v.to(torch.float32)


def seeds(seed, B, device):
    """int64 seeds on ``device``: (1,) for one integer seed, (B,) for one seed per sample.

    Seeds are 64-bit unsigned integers taken modulo 2^64: a Python int ``s`` means
    ``s mod 2^64`` (so -1 is 2^64 - 1), and an integer tensor's values are read as their
    64-bit two's-complement bits, which is the same thing (no host read is needed)."""
    if isinstance(seed, bool) or seed is None:
        raise TypeError(f"seed: expected an int or an integer tensor of shape ({B},), got {seed!r}")
    if isinstance(seed, numbers.Integral):
        s = int(seed) % 2**64
        if s >= 2**63:
            s -= 2**64  # same bits as the uint64
        # a fill on the device: torch.tensor([s], device=...) would be a host-to-device copy
        return torch.full((1,), s, dtype=torch.int64, device=device)
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
