"""A pipeline saved after acceleration names the stock library and class in model_index.json
(["diffusers", "<same name>"]), so it loads with stock diffusers, with or without diffaccel; the
accelerated classes still pickle, deep-copy and build from their config as themselves."""
import copy
import json
import pickle

import pytest
diffusers = pytest.importorskip("diffusers")

from support.diffusers_cases import STOCK  # noqa: E402
from diffaccel.integrations import diffusers as dd  # noqa: E402

# the first (default-config) case of each accelerated class
FIRST = {}
for _cls, _cfg in STOCK.values():
    FIRST.setdefault(_cls.__name__, (_cls, _cfg))


def _tiny_pipeline(scheduler):
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,),
                                 layers_per_block=1, down_block_types=("DownBlock2D",),
                                 up_block_types=("UpBlock2D",), norm_num_groups=4)
    return diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)


@pytest.mark.parametrize("name", sorted(dd.ACCELERATED))
def test_model_index_names_the_stock_class(tmp_path, name):
    assert set(FIRST) == set(dd.ACCELERATED)
    cls, cfg = FIRST[name]
    pipe = _tiny_pipeline(cls(**cfg))
    pipe.scheduler = dd.accelerate(pipe.scheduler)  # assigned after construction, as users do
    assert type(pipe.scheduler) is dd.ACCELERATED[name]
    assert list(pipe.config["scheduler"]) == ["diffusers", name]
    direct = _tiny_pipeline(dd.accelerate(cls(**cfg)))  # or passed to the constructor
    assert list(direct.config["scheduler"]) == ["diffusers", name]
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", name], index


def test_saved_pipeline_loads_with_stock_diffusers(tmp_path):
    name = "EulerAncestralDiscreteScheduler"
    cls, cfg = FIRST[name]
    pipe = _tiny_pipeline(dd.accelerate(cls(**cfg), seed=3))
    pipe.save_pretrained(tmp_path)
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is cls  # the stock class: no diffaccel needed to load it
    public = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    # and it accelerates again, and saves the same way
    loaded.scheduler = dd.accelerate(loaded.scheduler)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["scheduler"] == ["diffusers", name]


@pytest.mark.parametrize("name", sorted(dd.ACCELERATED))
def test_accelerated_classes_keep_their_identity(name):
    cls, cfg = FIRST[name]
    acc = dd.accelerate(cls(**cfg), seed=7)
    klass = dd.ACCELERATED[name]
    assert klass.__module__.startswith("diffaccel.")  # the class is still ours (repr, pickle, docs)
    for other in (pickle.loads(pickle.dumps(acc)), copy.deepcopy(acc), klass.from_config(acc.config)):
        assert type(other) is klass and other.is_accelerated
        assert other.__module__ == cls.__module__
    assert pickle.loads(pickle.dumps(klass)) is klass
    assert pickle.loads(pickle.dumps(acc))._da_seed == 7
