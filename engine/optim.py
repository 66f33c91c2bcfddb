"""AdamW with linear warmup then a constant LR (the AutoNAT/ENAT/NiT recipes) or a cosine decay, and the EMA update."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, tcfg, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """AdamW over `groups` (a family's parameter groups) or every parameter that requires grad."""
    params = groups if groups is not None else [p for p in model.parameters() if p.requires_grad]
    kw = dict(lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay), betas=tuple(float(b) for b in tcfg.betas),
              eps=float(tcfg.eps))
    flat = [p for g in params for p in g["params"]] if groups is not None else params
    if any(p.is_cuda for p in flat):
        kw["fused"] = True
    return torch.optim.AdamW(params, **kw)


def lr_at(step: int, tcfg) -> float:
    """LR used for the update that produces step `step + 1`: linear warm-up over train.warmup_steps, then constant
    (train.lr_schedule=constant) or a half cosine from train.lr down to train.lr * train.min_lr_ratio at
    train.steps (cosine: short runs gain from ending at a small LR)."""
    warm = int(tcfg.warmup_steps)
    base = float(tcfg.lr)
    if warm > 0 and step + 1 < warm:
        return base * (step + 1) / warm
    if str(tcfg.get("lr_schedule", "constant")) == "constant":
        return base
    total, floor = int(tcfg.steps), base * float(tcfg.get("min_lr_ratio", 0.0))
    frac = min(1.0, max(0.0, (step + 1 - warm) / max(1, total - warm)))
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model)
    ema.eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    mod_p = [p.detach() for p in model.parameters()]
    if ema_p:
        torch._foreach_lerp_(ema_p, mod_p, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)
