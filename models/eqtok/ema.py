"""The column tokenizer's EMA warm-up, as the release applies it (the engine's EMA follows it through
`Training.ema_decay`): per update n = 1, 2, ... decay_n = min(decay, (1 + n) / (10 + n)).
"""
from __future__ import annotations


def warmup_decay(decay: float, num_updates: int) -> float:
    return min(decay, (1 + num_updates) / (10 + num_updates))
