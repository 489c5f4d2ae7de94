"""The ``torch.ops.diffaccel`` ops, one module per family: ``noise`` (philox_uint32, noise),
``stroke`` (stroke_blur, stroke_blur_backward, stroke_noise), ``step`` (sample_step,
sample_step_out) and ``vrg`` (vrg_error_moments, vrg_cumulative_error(_grad)).

Each module holds its family's schemas, fake functions, autograd, the Python mirror of the C++
argument checks (called by the Triton implementation and by the fake, so torch.compile tracing
refuses what the kernels refuse) and the Triton implementations, registered with the helpers of
``diffaccel/library.py``. Importing this package (``import diffaccel`` does) registers all of
them; the Triton kernels themselves (``diffaccel.kernels``) load on the first Triton call, the
C++ / CUDA kernels with the extension (``diffaccel/_ext.py``).
"""
from . import noise, step, stroke, vrg  # noqa: F401  (registrations)

__all__ = ["noise", "stroke", "step", "vrg"]
