"""EMA of the column tokenizer's five modules, with the release's warm-up and its Lightning buffer names.

Per update n = 1, 2, ... (counted before use): decay_n = min(decay, (1 + n) / (10 + n)), and every shadow moves
shadow <- shadow - (1 - decay_n) (shadow - param). `state_dict()` uses the `ema_<module>.<param path without dots>`
names (plus `decay` and int32 `num_updates`) that `tokenizer.column.module_state_from_lightning` reads back.
"""
from __future__ import annotations

import torch
from torch import nn

from tokenizer.column import EMA_MODULES, ema_buffer_name


def warmup_decay(decay: float, num_updates: int) -> float:
    return min(decay, (1 + num_updates) / (10 + num_updates))


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
