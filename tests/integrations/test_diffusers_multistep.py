"""The accelerated DPMSolverMultistepScheduler (diffaccel.integrations._diffusers_multistep:
dpmsolver++ / sde-dpmsolver++, orders 1-3) against stock diffusers: the checks every family runs
(tests/support/diffusers_cases.py; step by step with stock's order at every step, and a
compiled loop that compiles once after init_history)."""
import pytest

diffusers = pytest.importorskip("diffusers")

from support.diffusers_cases import FamilyChecks  # noqa: E402


class TestMultistep(FamilyChecks):
    CLASSES = (diffusers.DPMSolverMultistepScheduler,)
    BAD_INPUT = ["dpm-sde-heun"]
    COMPILE = [("dpm", {}), ("dpm-sde-heun", {}), ("dpm-3-heun-sigmamin", {}), ("dpm-3-sde", {})]
    BATCH = [("dpm-sde-heun", {})]
    NONCONTIGUOUS = [("dpm-sde-heun", {})]
