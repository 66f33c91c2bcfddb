"""Checkpoint I/O: atomic writes, safe loads, our container and the official ones.

Our container: {'model', 'ema', 'optimizer', 'step', 'family', 'flavour', 'config'} written by rank 0 to
`<output_dir>/checkpoints/step_XXXXXXX.pt` through a temp file + os.replace, so a crash mid-write leaves the
previous checkpoint intact. Official containers (plain EMA state dicts, `module.`-prefixed, Lightning
`state_dict`, `{'model','model_ema'}`, safetensors) are unwrapped by `extract_state_dict`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

CKPT_RE = re.compile(r"step_(\d+)\.pt$")


class CheckpointError(ValueError):
    pass


def atomic_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def load_file(path: str | os.PathLike) -> dict:
    """Read a checkpoint file (torch pickle with weights_only=True, or safetensors) with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as st_load
        return st_load(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code objects, ...
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _is_state_dict(d) -> bool:
    return isinstance(d, dict) and len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def extract_state_dict(obj, prefer_ema: bool = True, source: str = "checkpoint") -> dict:
    """Find the model weights inside any of the containers we know."""
    if _is_state_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        order = ["ema", "model_ema", "model", "state_dict", "nnet_ema", "nnet"] if prefer_ema else \
            ["model", "state_dict", "nnet", "ema", "model_ema", "nnet_ema"]
        for k in order:
            if k in obj and _is_state_dict(obj[k]):
                sd = obj[k]
                break
        else:
            raise CheckpointError(f"{source}: no state dict found (top-level keys: {sorted(obj)[:10]})")
    else:
        raise CheckpointError(f"{source}: expected a dict, got {type(obj).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_strict(model: nn.Module, sd: dict, source: str = "checkpoint", ignore_prefixes: tuple = ()) -> None:
    """load_state_dict(strict=True) with an error that names missing/unexpected keys and shape mismatches."""
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignore_prefixes))} if ignore_prefixes else sd
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:5]}")
        if shape:
            parts.append(f"{len(shape)} shape mismatch(es) e.g. {shape[:3]}")
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def check_family(ckpt: dict, family: str, flavour: str | None, source) -> None:
    if isinstance(ckpt, dict) and "family" in ckpt and ckpt["family"] != family:
        raise CheckpointError(f"{source} is a '{ckpt['family']}' checkpoint (flavour {ckpt.get('flavour')}), "
                              f"but the config asks for family '{family}'")
