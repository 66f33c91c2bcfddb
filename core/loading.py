"""Reading weight files and loading them strictly, with errors that name the file and the keys.

Every loader of the project (our checkpoints, official generator weights, tokenizers) goes through `load_file` and
`load_strict`, so a mismatch always reads the same way and the entry point can turn `CheckpointError` into one line.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A weight file that cannot be read, or whose tensors do not fit the module."""


def load_file(path: str | os.PathLike, what: str = "a weights-only torch checkpoint"):
    """A torch pickle (weights_only=True) or a .safetensors file, with a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path} (expected {what})")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load
        try:
            return st_load(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot be read as a safetensors file ({_first_line(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code objects, not a torch file at all
        with open(path, "rb") as f:
            head = f.read(4)
        raise CheckpointError(f"{path}: cannot be read ({_load_failure(e, head)}); expected {what}") from None


def _load_failure(e: Exception, head: bytes) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words: torch's own text runs over many lines and
    advises weights_only=False, which must not be followed for a file of unknown origin."""
    text = str(e)
    if "Weights only load failed" in text:
        return "it holds pickled Python objects besides tensors, which a weights-only load refuses"
    if head[:2] == b"PK" or isinstance(e, EOFError) or "central directory" in text or "zip archive" in text:
        return "truncated or corrupted: not a complete torch.save file"
    if head[:1] != b"\x80":  # neither a zip archive (torch.save) nor a pickle (legacy torch.save)
        return "not a torch.save file"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_state_dict(d) -> bool:
    return isinstance(d, dict) and len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def strip_prefixes(state_dict: dict, prefixes=("module.", "_orig_mod.")) -> dict:
    """Drop wrapper prefixes (DDP, torch.compile) that a training checkpoint may carry."""
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def extract_state_dict(obj, prefer_ema: bool = True, source: str = "checkpoint") -> dict:
    """The model weights inside any container we know: a plain state dict, our {'model', 'ema', ...}, official
    {'model', 'model_ema'} / Lightning {'state_dict'} / U-ViT {'nnet_ema'}; `module.` prefixes removed."""
    if is_state_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        order = ["ema", "model_ema", "model", "state_dict", "nnet_ema", "nnet"] if prefer_ema else \
            ["model", "state_dict", "nnet", "ema", "model_ema", "nnet_ema"]
        for k in order:
            if k in obj and is_state_dict(obj[k]):
                sd = obj[k]
                break
        else:
            raise CheckpointError(f"{source}: no state dict found (top-level keys: {sorted(map(str, obj))[:10]})")
    else:
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _names(items: list[str], most: int = 5) -> str:
    return ", ".join(items[:most]) + (f", ... ({len(items)} in all)" if len(items) > most else "")


def mismatch(model: nn.Module, sd: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape mismatches) of `sd` against `model`, in the model's key order."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def check_strict(model: nn.Module, sd: dict, source: str = "checkpoint") -> None:
    """The one-line error of a strict load (missing/unexpected keys, shape mismatches), without loading."""
    missing, unexpected, shapes = mismatch(model, sd)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_names(shapes, 3)}")
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))


def load_strict(model: nn.Module, sd: dict, source: str = "checkpoint", ignore_prefixes: tuple = (),
                mapped: bool = False) -> None:
    """load_state_dict(strict=True) whose error (one line) names missing/unexpected keys and shape mismatches.

    mapped=True (a module that is only read: sampling, a frozen tokenizer): the file's CPU tensors of the module's
    dtype become the module's own (`assign`), so weights memory-mapped by the reader are not copied, and their
    pages are read from the file when first used; other tensors are copied as usual."""
    if ignore_prefixes:
        sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignore_prefixes))}
    check_strict(model, sd, source)
    if not mapped:
        model.load_state_dict(sd, strict=True)
        return
    own = model.state_dict()
    same = {k for k, v in sd.items()
            if v.dtype == own[k].dtype and v.device.type == "cpu" and own[k].device.type == "cpu"}
    model.load_state_dict({k: sd[k] for k in same}, strict=False, assign=True)
    model.load_state_dict({k: v for k, v in sd.items() if k not in same}, strict=False)


SAFETENSORS_CHUNK = 64 << 20  # bytes read per opening of a .safetensors file (its mapping is dropped in between)


def load_safetensors_strict(model: nn.Module, path: str | os.PathLike, source: str | None = None,
                            chunk_bytes: int = SAFETENSORS_CHUNK) -> None:
    """A flat .safetensors state dict (`module.` prefixes removed) loaded strictly into `model`, read with
    `safe_open` a group of tensors at a time: the shapes are checked from the header first, and the file's
    mapping is closed after every group, so the process holds the model plus one group, not the file twice."""
    from safetensors import SafetensorError, safe_open
    source = source or str(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read as a safetensors file ({_first_line(e)})") from None
    names = {k: k for k in shapes}
    if names and all(k.startswith("module.") for k in names):
        names = {k[len("module."):]: k for k in shapes}
    check_strict(model, {k: torch.empty(shapes[f], device="meta") for k, f in names.items()}, source)
    own = model.state_dict()
    groups, size = [[]], 0
    for k in own:
        if groups[-1] and size >= chunk_bytes:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += own[k].numel() * own[k].element_size()
    for group in groups:
        try:
            with safe_open(str(path), framework="pt") as f:
                part = {k: f.get_tensor(names[k]) for k in group}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot be read as a safetensors file ({_first_line(e)})") from None
        model.load_state_dict(part, strict=False)
        del part
