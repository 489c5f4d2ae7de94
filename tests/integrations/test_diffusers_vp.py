"""The accelerated DDPMScheduler and DDIMScheduler (diffaccel.integrations._diffusers_vp) against
stock diffusers: the checks every family runs (tests/support/diffusers_cases.py: step by step
against stock, named errors, torch.compile, batch-invariant seeds, non-contiguous / empty /
non-finite inputs) and stock's DDPM and DDIM pipelines end to end with a tiny UNet2DModel
built from a config. Their log-density tracking is tested in test_diffusers_track_logp.py,
return_logprob in test_diffusers_logprob.py."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from support.diffusers_cases import FamilyChecks  # noqa: E402
from diffaccel.integrations import diffusers as dd  # noqa: E402


class TestVP(FamilyChecks):
    CLASSES = (diffusers.DDPMScheduler, diffusers.DDIMScheduler)
    BAD_INPUT = ["ddpm", "ddim"]
    COMPILE = [("ddim", dict(eta=1.0)), ("ddpm", {})]
    BATCH = [("ddpm", {}), ("ddim", dict(eta=1.0))]
    NONCONTIGUOUS = [("ddim", dict(eta=1.0))]


def _tiny_unet():
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)


@pytest.mark.parametrize("pipe_cls", [diffusers.DDPMPipeline, diffusers.DDIMPipeline])
@pytest.mark.parametrize("gens", ["one", "list"])
def test_pipeline_end_to_end(pipe_cls, gens):
    """Stock pipeline against the same pipeline with the accelerated scheduler: the same images."""
    torch.manual_seed(int.from_bytes(__import__("os").urandom(2), "little"))
    unet = _tiny_unet().eval()
    pipe = pipe_cls(unet=unet, scheduler=diffusers.DDPMScheduler())
    kw = dict(eta=1.0) if pipe_cls is diffusers.DDIMPipeline else {}

    def gen():
        return ([torch.Generator().manual_seed(10 + b) for b in range(2)] if gens == "list"
                else torch.Generator().manual_seed(10))

    with torch.no_grad():
        img_s = pipe(batch_size=2, num_inference_steps=4, generator=gen(), output_type="np", **kw).images
        pipe.scheduler = dd.accelerate(pipe.scheduler)
        assert getattr(pipe.scheduler, "is_accelerated", False)
        img_a = pipe(batch_size=2, num_inference_steps=4, generator=gen(), output_type="np", **kw).images
    err = abs(img_a - img_s).max()
    # float32 rounding (~1e-7 relative per step) through 4 UNet calls stays far below 1e-4
    assert err < 1e-4, f"{pipe_cls.__name__} ({gens}): max image difference {err:.3g}"
