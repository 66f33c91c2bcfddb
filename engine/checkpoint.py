"""Our checkpoint container and its folder: atomic writes, listing, pruning, the family check.

Container: {'model', 'ema', 'optimizer', 'step', 'family', 'flavour', 'config'} (plus 'scaler' for fp16 runs)
written by rank 0 to `<output_dir>/checkpoints/step_XXXXXXX.pt` through a temp file + rename, so a crash mid-write
leaves the previous checkpoint intact. Reading files and strict loading (ours and the official containers) live in
core.loading, shared with the tokenizers.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from core.io import atomic_torch_save
from core.loading import (CheckpointError, extract_state_dict, load_file, load_safetensors_strict,  # noqa: F401
                          load_strict)  # (re-exported)

CKPT_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(obj, path: str | os.PathLike) -> None:
    atomic_torch_save(obj, path)


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir) -> Path | None:
    c = list_checkpoints(ckpt_dir)
    return c[-1] if c else None


def prune(ckpt_dir, keep: int) -> None:
    if keep > 0:
        for p in list_checkpoints(ckpt_dir)[:-keep]:
            p.unlink(missing_ok=True)


def check_family(ckpt: dict, family: str, flavour: str | None, source) -> None:
    if isinstance(ckpt, dict) and "family" in ckpt and ckpt["family"] != family:
        raise CheckpointError(f"{source} is a '{ckpt['family']}' checkpoint (flavour {ckpt.get('flavour')}), "
                              f"but the config asks for family '{family}'")
