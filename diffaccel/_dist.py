"""Who this process is among the ranks, and the in-place sum over them: the part of
:mod:`diffaccel.distributed` that :mod:`diffaccel.vrg.moments` needs too
(``ErrorStats.all_reduce``), below both so that neither imports the other. Public under
:mod:`diffaccel.distributed`."""
import os
from typing import NamedTuple

import torch

__all__ = ["Ranks", "ranks", "all_reduce"]


class Ranks(NamedTuple):
    """This process's place: ``rank`` in ``[0, world_size)``, the ``device`` collectives use
    (CUDA for NCCL, else CPU), and the ``torch.distributed`` ``group`` (None: the default)."""
    rank: int
    world_size: int
    device: torch.device
    group: object = None


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def ranks(state=None, group=None):
    """The :class:`Ranks` of this process from an accelerate ``PartialState`` / ``Accelerator``
    (``state``), else from ``torch.distributed`` (``group``), else rank 0 of 1.

    Raises RuntimeError when the process was launched as one of several (``WORLD_SIZE`` > 1)
    but neither is set up: each process would otherwise silently compute everything."""
    dist = _dist()
    if state is not None:
        for attr in ("process_index", "num_processes", "device"):
            if not hasattr(state, attr):
                raise TypeError(f"state: expected an accelerate PartialState or Accelerator "
                                f"(with .{attr}), got {type(state).__name__}")
        world, rank = int(state.num_processes), int(state.process_index)
        if world > 1 and dist is None:
            raise RuntimeError("state: reports several processes but torch.distributed is not "
                               "initialized")
        if world == 1 and dist is not None and dist.get_world_size(group) > 1:
            # accelerate's PartialState() on a machine without GPUs under a multi-process launch
            raise RuntimeError(f"state: reports 1 process but torch.distributed has "
                               f"{dist.get_world_size(group)}; without GPUs create "
                               f"PartialState(cpu=True) (or Accelerator(cpu=True))")
        return Ranks(rank, world, torch.device(state.device), group)
    if dist is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError("launched as one of WORLD_SIZE={} processes, but torch.distributed "
                               "is not initialized: call torch.distributed.init_process_group() "
                               "or pass state=accelerate.PartialState()"
                               .format(os.environ["WORLD_SIZE"]))
        return Ranks(0, 1, torch.device("cpu"), group)
    backend = str(dist.get_backend(group))
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend \
        else torch.device("cpu")
    return Ranks(dist.get_rank(group), dist.get_world_size(group), device, group)


def all_reduce(tensor, state=None, group=None):
    """Sum ``tensor`` over the ranks, in place (a no-op on one process); returns it."""
    rk = ranks(state, group)
    if rk.world_size == 1:
        return tensor
    t = tensor.to(rk.device)
    _dist().all_reduce(t, group=rk.group)
    if t is not tensor:
        tensor.copy_(t)
    return tensor
