"""Autocast and grad scaling from one config word (fp32 | bf16 | fp16)."""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {list(DTYPES)}, got '{precision}'")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs CUDA; use bf16 (or fp32) on CPU")
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str):
    return torch.amp.GradScaler("cuda") if (precision == "fp16" and device.type == "cuda") else None
