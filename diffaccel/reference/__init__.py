"""The PyTorch reference path: the numerics contract of docs/math.md, written plainly.

Every compiled kernel is tested against these functions. They run on any device, support
autograd where the op is differentiable, and favour clarity over speed.
"""
from .random import philox_uint32, uniform_from, draw, noise
from .stroke import block_means, stroke_project, stroke_blur, stroke_noise
from . import vrg  # noqa: F401  (VRG: reference.vrg.error_moments, cumulative_error)
from . import step  # noqa: F401  (the fused sampler step: reference.step.sample_step)

__all__ = ["philox_uint32", "uniform_from", "draw", "noise", "block_means", "stroke_project",
           "stroke_blur", "stroke_noise"]
