"""Process-group setup and the few collectives the rest of the project needs.

Works the same with or without torchrun: without RANK/WORLD_SIZE in the environment we run as a
single process and every collective degenerates to the identity.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_distributed(device: str | None = None) -> torch.device:
    """Initialise the process group if launched by torchrun and return this process's device.

    nccl on CUDA, gloo on CPU. `device` forces 'cpu' or 'cuda'; None picks CUDA when present.
    """
    want_cuda = torch.cuda.is_available() if device in (None, "auto") else str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but torch.cuda.is_available() is False")
    if want_cuda:
        dev = torch.device("cuda", local_rank())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not is_dist():
        backend = "nccl" if want_cuda else "gloo"
        kw = dict(backend=backend, timeout=datetime.timedelta(minutes=60))
        if want_cuda:
            kw["device_id"] = dev
        dist.init_process_group(**kw)
    return dev


def barrier() -> None:
    if is_dist():
        dist.barrier()


def destroy() -> None:
    if is_dist():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world_size()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0, rank-major; ranks may hold different row counts."""
    if not is_dist():
        return t
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    pad = t.new_zeros((m - t.shape[0],) + tuple(t.shape[1:]))
    buf = [t.new_empty((m,) + tuple(t.shape[1:])) for _ in sizes]
    dist.all_gather(buf, torch.cat([t, pad], 0).contiguous())
    return torch.cat([b[:s] for b, s in zip(buf, sizes)], 0)
