"""Reading released weight containers without running any of their code, memory-mapped.

A released checkpoint may pickle classes of the code that wrote it: a Lightning 1.4 `.ckpt` keys its `callbacks`
state by the callback class (`ModelCheckpoint`), `hyper_parameters` may hold OmegaConf nodes. A plain weights-only
load refuses such a file outright. `read_released` keeps torch's weights-only unpickler (tensors, plain data and
torch's own allow-list are all it builds) and adds one thing: every global the file names that is not on that
allow-list (found by scanning the pickle's opcodes, nothing executed) is bound to an inert placeholder class made
here. The foreign module is never imported, its class never called, its `__reduce__`/`__setstate__` never run:
a placeholder only records the arguments and state the file gives it. Globals of blocked modules (os, sys, posix,
nt) stay refused by torch. The classes met are logged once per file.

Tensors are memory-mapped (`torch.load(weights_only=True, mmap=True)`): nothing is read until used, so the unused
copies of a container (`model` next to `model_ema`, optimizer state) cost no memory.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from loguru import logger

from core.loading import CheckpointError, _load_failure


# plain-data classes released containers pickle whose unpickling runs no code of theirs (BUILD updates __dict__)
KNOWN_CLASSES = [argparse.Namespace]
_logged: set[str] = set()


class Placeholder:
    """An object (or the class itself) of a class the reader does not load. `foreign` is the dotted name in the
    file; `args` and `state` are what the file passed to its constructor and `__setstate__`, kept as data."""

    foreign = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None)
        return obj

    def __init__(self, *args, **kwargs):  # a REDUCE "call": the arguments are already kept by __new__
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<placeholder of {self.foreign}>"


def _allow(extra: list):
    """torch's safe_globals context for what is not allow-listed yet: on exit it removes everything it was given,
    even an entry that was there before (eqar_family allow-lists argparse.Namespace for the whole process)."""
    present = set(torch.serialization.get_safe_globals())
    return torch.serialization.safe_globals([g for g in extra if g not in present])


def placeholder_class(name: str) -> type:
    return type(f"Placeholder[{name}]", (Placeholder,), {"foreign": name, "__module__": __name__})


def foreign_globals(path: str) -> list[str]:
    """The globals a torch zip file's pickle names outside torch's weights-only allow-list and KNOWN_CLASSES
    (a static scan of the opcodes)."""
    with _allow(KNOWN_CLASSES):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def read_released(path: str | os.PathLike, what: str = "a released checkpoint", log: bool = True):
    """torch.load(weights_only=True) of a released container, foreign classes read as inert placeholders,
    tensors memory-mapped (zip files; a legacy torch.save file is read whole). One-line CheckpointError naming the
    file (and the class) for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path} (expected {what})")
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = head[:2] == b"PK"
    names = []
    if is_zip:
        try:
            names = foreign_globals(str(path))
        except Exception as e:  # truncated zip, no data.pkl, a TorchScript archive
            raise CheckpointError(f"{path}: cannot be read ({_load_failure(e, head)}); expected {what}") from None
    allowed = KNOWN_CLASSES + [(placeholder_class(n), n) for n in names]
    try:
        with _allow(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:
        why = _load_failure(e, head)
        if names:  # torch's own text advises an unsafe load: only its line naming the refused global is kept
            lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "blocked" in ln or "Placeholder[" in ln]
            why = f"it holds pickled Python objects ({', '.join(names)}) that a weights-only load refuses even as " \
                  f"inert placeholders" + (f": {lines[0][:200]}" if lines else "")
        raise CheckpointError(f"{path}: cannot be read ({why}); expected {what}") from None
    if log and names and str(path) not in _logged:  # log=False: a look at shapes before the load
        _logged.add(str(path))
        logger.warning(f"{path}: {len(names)} class(es) of the code that wrote it read as inert placeholders (never "
                       f"imported or run): {', '.join(names)}")
    return obj


def placeholders_in(obj, depth: int = 4) -> list[str]:
    """Dotted names of the placeholders inside dicts/lists/tuples of `obj` (keys included), a few levels deep."""
    found = set()

    def walk(o, d):
        if isinstance(o, type) and issubclass(o, Placeholder) or isinstance(o, Placeholder):
            found.add(o.foreign)
        elif d > 0 and isinstance(o, dict):
            for k, v in o.items():
                walk(k, d - 1)
                walk(v, d - 1)
        elif d > 0 and isinstance(o, (list, tuple)):
            for v in o:
                walk(v, d - 1)

    walk(obj, depth)
    return sorted(found)


def not_weights(path, obj, what: str) -> CheckpointError | None:
    """The error for a container whose weights are not where expected because placeholders stand there instead
    (None when it holds no placeholder): the classes named, not a confusing key list."""
    names = placeholders_in(obj)
    if not names:
        return None
    return CheckpointError(f"{path}: cannot be read (it holds pickled Python objects ({', '.join(names)}) where "
                           f"the weights were expected; they were not run); expected {what}")
