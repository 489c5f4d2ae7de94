"""One graph per sampling loop: a whole k-diffusion sampler loop (model + fused steps) for a
fixed list of noise levels traces with torch.compile(fullgraph=True) into one frame, compiled
once for every new input of the same shape, with the eager numbers."""
import pytest
import torch

import diffaccel.sampling as S
import diffaccel.schedules as sch
from support import assert_close

torch_testing = pytest.importorskip("torch._dynamo.testing")


class TinyDenoiser(torch.nn.Module):
    """EDM-style preconditioned 3x3 conv: Dn(x, sigma) = c_skip x + c_out F(c_in x)."""

    def __init__(self, c=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        return x / (1 + s ** 2) + s / (1 + s ** 2) ** 0.5 * self.conv(x / (1 + s ** 2) ** 0.5)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch.set_num_threads(n)
    torch._dynamo.reset()


@pytest.mark.parametrize("name,kw", [
    ("sample_dpmpp_2m", {}),                                       # multistep, no noise
    ("sample_euler_ancestral", dict(seed=torch.tensor([5, 9]))),   # noise drawn in the step
    ("sample_dpmpp_sde", dict(seed=3)),                             # correlated Brownian noise
])
def test_whole_loop_compiles_once(name, kw, rng):
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (), generator=rng)))
    model = TinyDenoiser().eval()
    sigmas = sch.karras_sigmas(5, 0.05, 10.0).tolist()  # a list: the levels are constants
    fn = S.K_SAMPLERS[name][0]

    def loop(x):
        with torch.no_grad():
            return fn(model, x, sigmas, disable=True, backend="cpu", **kw)

    counter = torch_testing.CompileCounterWithBackend("aot_eager")  # also traces the fake ops
    compiled = torch.compile(loop, backend=counter, fullgraph=True)
    for _ in range(2):
        x = torch.randn(2, 4, 6, 6, generator=rng) * 10
        assert_close(compiled(x), loop(x), atol=1e-5, rtol=1e-5, what=name)
    assert counter.frame_count == 1, f"{name}: {counter.frame_count} compilations"
    # every step's model call and fused step are in the one graph
    assert counter.op_count > 4 * (len(sigmas) - 1), counter.op_count
