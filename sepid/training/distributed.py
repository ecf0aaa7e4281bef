"""Cross-rank reductions for metrics under ``torchrun`` DDP.

SpeechBrain hands ``on_stage_end`` each rank's own stage loss and each rank's metric objects saw
only its shard of the data; these reduce them so every rank logs and checkpoints on the same,
global numbers. Without DDP they return their input.
"""

import torch
from speechbrain.utils.distributed import ddp_all_reduce, run_on_main


def global_mean(value, count):
    """Mean over all ranks of per-rank means ``value`` computed on ``count`` items each."""
    total = torch.tensor([float(value) * count, float(count)], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":
            total = total.cuda()
    total = ddp_all_reduce(total, torch.distributed.ReduceOp.SUM).cpu()
    return float(total[0] / total[1].clamp(min=1.0))


def gather_objects(obj):
    """Every rank's ``obj`` in rank order (``[obj]`` without DDP)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def shard(keys):
    """This rank's share of ``keys`` (all of them without DDP). SpeechBrain 1.1 splits only the
    training loader across ranks; evaluation sets are sharded here so that each item is
    processed once and the gathered results hold each key once."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(keys)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return list(keys)[rank::world]


def load_on_every_rank(loader, **kwargs):
    """``loader(**kwargs)`` on every rank, the files fetched by the main process first.

    SpeechBrain's ``fetch`` links a local source's files into ``savedir`` by removing then
    re-creating each link, so ranks fetching into the same ``savedir`` at once can remove a
    link another rank is about to read (or find it re-created: ``FileExistsError``); once the
    files are there, every rank takes them as they are. The main process's first load is
    dropped: ``run_on_main`` broadcasts what its function returns, and a model loaded through
    ``foreign_class`` does not even pickle."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():

        def fetch(**where):
            loader(**where)

        run_on_main(fetch, kwargs=kwargs)
    return loader(**kwargs)
