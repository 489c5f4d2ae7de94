"""The accelerated EulerDiscreteScheduler (with stock's churn) and EulerAncestralDiscreteScheduler
(diffaccel.integrations._diffusers_sigma) against stock diffusers: the checks every family runs
(tests/support/diffusers_cases.py). Custom sigmas are tested in test_diffusers_flow.py and
test_diffusers_api.py (VRG trajectories)."""
import pytest

diffusers = pytest.importorskip("diffusers")

from support.diffusers_cases import FamilyChecks  # noqa: E402


class TestSigma(FamilyChecks):
    CLASSES = (diffusers.EulerDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler)
    BAD_INPUT = ["euler", "euler-a"]
    COMPILE = [("euler", {}), ("euler-churn", dict(s_churn=1.0, s_tmin=0.5, s_tmax=10.0)), ("euler-a", {})]
    BATCH = [("euler-a", {})]
    NONCONTIGUOUS = [("euler-a", {})]
