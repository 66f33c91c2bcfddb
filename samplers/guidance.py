"""Classifier-free guidance: the one guidance formula of the repository, u + w·(c − u).

Convention: w is the weight of the conditional output c against the unconditional u (w = 1: c alone, no
unconditional forward needed; w = 0: u alone). Every sampler combines through `combine`; each family's official flag
is turned into w where the family builds its sampling settings or model function:
  NiT `--cfg-scale` (sample.cfg_scale)            w itself (the official u + w·(c − u))
  eqar `--cfg` (sample.cfg)                       w itself (release `forward_with_cfg`), per token by the cfg schedule
  NAT / AutoNAT / ENAT `--cfg_scale`, manual_cfg  s of the official c + s·(c − u), so w = 1 + s (`weight_from_s`)

`ClassifierFreeGuidance(model_fn, null_label)` runs the conditional and the unconditional rows in ONE forward of
2B rows (`[ids; ids]` with labels `[labels; null]`). Stateful model functions stay pluggable: `reset()` is
forwarded, and since the conditional rows are always rows 0..B−1 and the unconditional rows B..2B−1, a per-row cache
inside `model_fn` keeps the two passes' states apart.
"""
from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def combine(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """u + w·(c − u), in float32 at least (model outputs may come from bf16/fp16 autocast; float64 stays float64)."""
    dtype = torch.promote_types(cond.dtype, torch.float32)
    cond, uncond = cond.to(dtype), uncond.to(dtype)
    return uncond + w * (cond - uncond)


def weight_from_s(s: float) -> float:
    """The mask-predict families' official scale s (logits c + s·(c − u)) as the weight w = 1 + s."""
    return 1.0 + float(s)


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

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor, w: float) -> torch.Tensor:
        cond, uncond = self.pair(ids, labels)
        return combine(cond, uncond, w)
