"""Test fixture: an EMA of the column tokenizer's five modules kept as the release keeps it, whose `state_dict()`
has the release's Lightning buffer names (`ema_<module>.<param path without dots>`, `decay`, int32 `num_updates`)
that `tokenizer.column.module_state_from_lightning` reads back. Tests write released-style files with it; training
here uses the engine's EMA with the same warm-up (models.eqtok.ema.warmup_decay).
"""
from __future__ import annotations

import torch
from torch import nn

from models.eqtok.ema import warmup_decay
from tokenizer.column import EMA_MODULES, ema_buffer_name


class ColumnEMA:
    def __init__(self, model: nn.Module, decay: float = 0.99, modules=EMA_MODULES):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.num_updates, self.modules = float(decay), 0, tuple(modules)
        self.shadow = {(m, n): p.detach().clone().float() for m in self.modules
                       for n, p in getattr(model, m).named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """One step; returns the decay used. Modules whose parameters no longer require grad (frozen in stage 2)
        keep their shadows."""
        self.num_updates += 1
        d = warmup_decay(self.decay, self.num_updates)
        for m in self.modules:
            for n, p in getattr(model, m).named_parameters():
                if p.requires_grad and (m, n) in self.shadow:
                    s = self.shadow[(m, n)]
                    s.sub_((1.0 - d) * (s - p.detach().float()))
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for (m, n), s in self.shadow.items():
            getattr(model, m).get_parameter(n).copy_(s)

    def state_dict(self) -> dict:
        out = {}
        for m in self.modules:
            out[f"ema_{m}.decay"] = torch.tensor(self.decay, dtype=torch.float32)
            out[f"ema_{m}.num_updates"] = torch.tensor(self.num_updates, dtype=torch.int32)
        for (m, n), s in self.shadow.items():
            out[ema_buffer_name(m, n)] = s.clone()
        return out
