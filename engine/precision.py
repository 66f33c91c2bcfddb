"""Autocast and grad scaling from one config word (auto | fp32 | bf16 | fp16); `auto` is resolved by
core.precision.resolve_precision (bf16 where the device computes it natively, else fp32) and logged once."""
from __future__ import annotations

import contextlib

import torch

from core.precision import DTYPES, WORDS, resolve_precision

__all__ = ["DTYPES", "WORDS", "autocast", "grad_scaler", "resolve_precision"]


def autocast(device: torch.device, precision: str, role: str = "autocast"):
    word, _ = resolve_precision(precision, device, role)
    if word == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[word])


def grad_scaler(device: torch.device, precision: str, role: str = "train"):
    word, _ = resolve_precision(precision, device, role)
    return torch.amp.GradScaler("cuda") if (word == "fp16" and torch.device(device).type == "cuda") else None
