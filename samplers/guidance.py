"""Classifier-free guidance as a wrapper around a model function.

`ClassifierFreeGuidance(model_fn, null_label)` runs the conditional and the unconditional rows in ONE forward of
2B rows (`[ids; ids]` with labels `[labels; null]`) and combines them as c + s·(c − u) (s = 0: no guidance,
s = w − 1 in the "w" convention). Stateful model functions stay pluggable: `reset()` is forwarded, and since the
conditional rows are always rows 0..B−1 and the unconditional rows B..2B−1, a per-row cache inside `model_fn`
keeps the two passes' states apart.
"""
from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """c + s·(c − u), in float32 at least (model outputs may come from bf16/fp16 autocast)."""
    dtype = torch.promote_types(cond.dtype, torch.float32)
    cond, uncond = cond.to(dtype), uncond.to(dtype)
    return cond + scale * (cond - uncond)


class ClassifierFreeGuidance:
    def __init__(self, model_fn: ModelFn, null_label: int):
        self.model_fn = model_fn
        self.null_label = int(null_label)

    def reset(self) -> None:
        reset = getattr(self.model_fn, "reset", None)
        if callable(reset):
            reset()

    def pair(self, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) logits, each [B, L, V], from one batched forward."""
        b = ids.shape[0]
        null = torch.full_like(labels, self.null_label)
        out = self.model_fn(torch.cat([ids, ids]), torch.cat([labels, null]))
        return out[:b], out[b:]

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        cond, uncond = self.pair(ids, labels)
        return combine(cond, uncond, scale)
