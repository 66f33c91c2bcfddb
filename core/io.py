"""Atomic file writes: a temp file in the target's folder, flushed to disk, then renamed over the target, so a
crash mid-write leaves the previous file (or none) and never a truncated one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temp path next to `path`; on success it replaces `path`, on error it is removed.

    `suffix` keeps the extension for writers that pick the format from it (PIL, numpy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None], suffix: str = "") -> None:
    """writer(tmp_path) writes the content; then it becomes `path`."""
    with atomic_path(path, suffix) as tmp:
        writer(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch
    atomic_write(path, lambda p: torch.save(obj, p))
