"""Backend selection: ``reference`` (PyTorch), ``cpu`` (C++), ``triton``, ``cuda`` (C++/CUDA).

The backend of a call is, in order: its ``backend=`` argument, the innermost
``use_backend(name)`` block, the ``DIFFACCEL_BACKEND`` environment variable, else ``auto``:
``cuda`` then ``triton`` for CUDA tensors, ``cpu`` then ``reference`` for CPU tensors. A backend
asked for by name that cannot run raises ``BackendUnavailable`` saying why; ``auto`` falls back
quietly.
"""
import contextlib
import importlib.util
import os
import re
import threading

import torch

from . import _ext

BACKENDS = ("reference", "cpu", "triton", "cuda")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
_local = threading.local()


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but cannot run this call."""


def _check_name(name):
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name):
    """Run the enclosed calls on backend ``name`` (or ``"auto"``)."""
    _check_name(name)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def requested(backend=None):
    """The backend name in force for a call (``"auto"`` if none was asked for)."""
    if backend is not None:
        return _check_name(backend)
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return _check_name(os.environ.get("DIFFACCEL_BACKEND", "auto") or "auto")


def triton_interpret():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton 3.4 is the first release whose tl.randint4x splits a 64-bit offset into two 32-bit
# Philox counter words (triton PR 6832); before it an int64 offset ran Philox4x64, another
# stream, and every position of the fused step and the tile stroke noise is int64.
MIN_TRITON = (3, 4)


def triton_version_problem():
    """None when the installed Triton draws diffaccel's stream, else why not (a sentence)."""
    try:
        import triton
    except Exception as exc:  # noqa: BLE001  (a broken install: say so rather than fail later)
        return f"triton does not import: {type(exc).__name__}: {exc}"
    version = getattr(triton, "__version__", "") or ""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m.group(1)), int(m.group(2))) < MIN_TRITON:
        return (f"triton {version or '(unknown version)'} is older than "
                f"{'.'.join(map(str, MIN_TRITON))}: its tl.randn/rand/randint draw from another Philox "
                f"stream at 64-bit offsets; install triton>={'.'.join(map(str, MIN_TRITON))}")
    return None


def _has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"diffaccel::{op}", key)


def _parse_archs(archs):
    """[(major, minor, ptx)] of a TORCH_CUDA_ARCH_LIST string such as "8.0;9.0+PTX"."""
    out = []
    for item in archs.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        ptx = item.upper().endswith("+PTX")
        base = item[:-4] if ptx else item
        try:
            major, minor = base.split(".")
            out.append((int(major), int(minor.rstrip("aAfF")), ptx))
        except ValueError:
            continue
    return out


def arch_supported(archs, capability):
    """(ok, reason): can a build for ``archs`` ("8.0;9.0+PTX") run on a device of compute
    ``capability`` (major, minor)? SASS for X.Y runs on X.Z with Z >= Y; PTX for X.Y is compiled
    by the driver for any device of capability >= X.Y."""
    major, minor = capability
    parsed = _parse_archs(archs)
    for a_major, a_minor, ptx in parsed:
        if a_major == major and a_minor <= minor:
            return True, f"sm_{a_major}{a_minor} code runs on sm_{major}{minor}"
        if ptx and (a_major, a_minor) <= (major, minor):
            return True, f"PTX for sm_{a_major}{a_minor} is compiled by the driver for sm_{major}{minor}"
    return False, (f"diffaccel._C has CUDA code for {archs or 'no architecture'}, none of which runs on "
                   f"this sm_{major}{minor} device (rebuild with TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\")")


def availability(name, device_type, op="stroke_blur"):
    """(available, reason) of backend ``name`` for tensors on ``device_type`` running ``op``."""
    if name == "reference":
        return True, "pure PyTorch, any device"
    if name == "cpu":
        if device_type != "cpu":
            return False, f"the cpu backend runs on CPU tensors, got {device_type} tensors"
        if _ext.load() is None:
            return False, _ext.error()
        if not _has_kernel(op, "CPU"):
            return False, f"diffaccel::{op} has no CPU kernel in the extension"
        return True, "C++ kernels in diffaccel._C"
    if name == "cuda":
        if device_type != "cuda":
            return False, f"the cuda backend runs on CUDA tensors, got {device_type} tensors"
        if not torch.cuda.is_available():
            return False, "no CUDA device is available"
        if _ext.load() is None:
            return False, _ext.error()
        if not _ext.with_cuda() or not _has_kernel(op, "CUDA"):
            return False, "diffaccel._C was built without CUDA kernels"
        ok, why = arch_supported(_ext.cuda_archs(), torch.cuda.get_device_capability())
        if not ok:
            return False, why
        return True, f"CUDA kernels in diffaccel._C (archs {_ext.cuda_archs()})"
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
        problem = triton_version_problem()
        if problem:
            return False, problem
        if device_type == "cuda":
            if not torch.cuda.is_available():
                return False, "no CUDA device is available"
            return True, "Triton kernels on the GPU"
        if device_type == "cpu":
            if not triton_interpret():
                return False, "Triton runs CPU tensors only under TRITON_INTERPRET=1"
            return True, "Triton interpreter (TRITON_INTERPRET=1) on CPU tensors"
        return False, f"no Triton support for {device_type} tensors"
    raise ValueError(f"backend: unknown backend {name!r}")


_cache = {}


def _resolve(req, device_type, op):
    key = (req, device_type, op)
    if key not in _cache:
        if req == "auto":
            order = _AUTO_ORDER.get(device_type, ("reference",))
            _cache[key] = (next(n for n in order if availability(n, device_type, op)[0]), "")
        else:
            ok, why = availability(req, device_type, op)
            _cache[key] = (req, "") if ok else ("", f"backend {req!r} is unavailable for {op}: {why}")
    return _cache[key]


def select(backend, device, op):
    """The backend that runs ``op`` on ``device`` for this call; raises if a named one can't."""
    device_type = torch.device(device).type
    choice, why = _resolve_compiled(requested(backend), device_type, op)
    if not choice:
        raise BackendUnavailable(why)
    return choice


# Under torch.compile the choice is made once while tracing and baked into the graph.
_resolve_compiled = torch._dynamo.assume_constant_result(_resolve)


def clear_cache():
    """Forget cached choices (after changing TRITON_INTERPRET or loading the extension)."""
    _cache.clear()
