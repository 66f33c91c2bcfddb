"""Process-group setup and the few collectives the rest of the project needs.

Works the same with or without torchrun: without RANK/WORLD_SIZE in the environment we run as a
single process and every collective degenerates to the identity.
"""
from __future__ import annotations

import datetime
import os
import threading
import time

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
        _start_watch()
    return dev


def barrier() -> None:
    if is_dist():
        dist.barrier()


def destroy() -> None:
    stop_watch()
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


# ------------------------------------------------------------------ an error met by one process, told to the others
# A process that stops with a one-line error may leave the others blocked in a collective with it, where they would
# die with the backend's traceback (gloo) or hang until the timeout (nccl), saying nothing of the cause. The stopping
# process leaves its line in the process group's key-value store and waits a little; every other process watches the
# store from a thread, prints the line when it appears and exits with the same code.
# (keys per launcher attempt: an elastic restart keeps the store, but not the error of the attempt before)
_ATTEMPT = f"project_error/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
_ERR_LINE, _ERR_COUNT, _ERR_ACKS = f"{_ATTEMPT}/line", f"{_ATTEMPT}/count", f"{_ATTEMPT}/acks"
_WATCH = {"store": None, "world": 1, "handler": None, "done": False, "peer": False, "lock": threading.Lock(),
          "thread": None, "stop": threading.Event()}


def on_peer_error(handler) -> None:
    """handler(line): prints another process's error line on this one (set before the process group starts)."""
    _WATCH["handler"], _WATCH["done"], _WATCH["peer"] = handler, False, False


def _claim() -> bool:
    """True once per process: the first of (this process's own error, a peer's line) to be reported."""
    with _WATCH["lock"]:
        if _WATCH["done"]:
            return False
        _WATCH["done"] = True
        return True


def _watch(interval_s: float = 0.5) -> None:
    store = _WATCH["store"]
    while not _WATCH["stop"].wait(interval_s) and not _WATCH["done"]:
        try:
            if not store.check([_ERR_LINE]):
                continue
            line = store.get(_ERR_LINE).decode()
        except Exception:  # the store is gone: the run is over
            return
        if _claim():
            try:
                _report_peer(store, line)
                time.sleep(5.0)  # the process that met the error exits first: the launcher names it as the cause
            finally:
                os._exit(2)


def _report_peer(store, line: str) -> None:
    _WATCH["peer"] = True
    if _WATCH["handler"] is not None:
        _WATCH["handler"](line)
    store.add(_ERR_ACKS, 1)


def failed_because_of_peer() -> bool:
    """This process's collective failed (an exception from the backend): True when another process stopped with an
    error line, now printed here (by the watch, or now), so the backend's traceback says nothing new."""
    if _WATCH["peer"]:
        return True
    store = _WATCH["store"]
    if store is None:
        return False
    try:
        deadline = time.time() + 2.0
        while not store.check([_ERR_LINE]):  # the peer counts itself before it writes its line
            if int(store.add(_ERR_COUNT, 0)) == 0 or time.time() > deadline:
                return False
            time.sleep(0.02)
        line = store.get(_ERR_LINE).decode()
    except Exception:
        return False
    if _claim():
        _report_peer(store, line)
    return True


def _start_watch() -> None:
    try:
        _WATCH["store"], _WATCH["world"] = dist.distributed_c10d._get_default_store(), world_size()
    except Exception:  # a backend without a store: errors stay per process
        return
    if _WATCH["world"] > 1 and _WATCH["thread"] is None:
        _WATCH["stop"].clear()
        _WATCH["thread"] = threading.Thread(target=_watch, name="peer-error-watch", daemon=True)
        _WATCH["thread"].start()


def publish_error(line: str) -> bool:
    """This process stops with `line`: leave it for the others (their watch prints it). Returns True when this
    process is the one that repeats the line after the launcher's summary: the first to publish one, or rank 0 when
    there is no process group. False also when a peer's line was already reported here (this error followed it)."""
    if not _claim():
        return False
    store = _WATCH["store"] if is_dist() else None
    if store is None:
        return os.environ.get("RANK", "0") == "0"
    try:
        first = int(store.add(_ERR_COUNT, 1)) == 1
        if first:
            store.set(_ERR_LINE, line)
        return first
    except Exception:
        return rank() == 0


def await_peers(timeout_s: float = 10.0) -> None:
    """After publish_error: stay until every other process has printed the line (the launcher stops the rest as
    soon as one process exits), at most timeout_s."""
    store, world = _WATCH["store"], _WATCH["world"]
    if store is None or world < 2 or not is_dist():
        return
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and int(store.add(_ERR_ACKS, 0)) + int(store.add(_ERR_COUNT, 0)) < world:
            time.sleep(0.05)
    except Exception:
        pass


def stop_watch() -> None:
    """The run ends normally: the watch thread stops, and is joined before the process group and its store go away
    (a thread left inside a store call at exit aborts the process: "terminate called without an active exception",
    exit -6, after a run that finished)."""
    _WATCH["done"] = True
    _WATCH["stop"].set()
    thread = _WATCH["thread"]
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=10.0)
    _WATCH["thread"] = None
