"""AdamW with linear warmup then constant LR (the AutoNAT/ENAT recipe), and the EMA update."""
from __future__ import annotations

import copy

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
    """LR used for the update that produces step `step + 1`."""
    warm = int(tcfg.warmup_steps)
    base = float(tcfg.lr)
    return base * min(1.0, (step + 1) / warm) if warm > 0 else base


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
