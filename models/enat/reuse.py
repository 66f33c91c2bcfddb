"""ENAT temporal feature reuse as a stateful model function for the shared mask-predict sampler.

    fn = ReuseModelFn(model)            # ReuseModelFn(model, reuse=False): the plain disentangled pass every step
    tokens = samplers.mask_predict.sample(fn, labels, generators, seq_len=..., codebook_size=...,
                                          strategy=Strategy.enat_cosine(...), null_label=model.null_label,
                                          rule="exact")

The sampler calls `reset()` before step 0 and then `fn(ids, labels) -> logits` once per step with the rows in the
same order; the object keeps the previous step's {feat, masking} per row and hands it to the model as `prev`.
With batched guidance the call holds 2B rows (conditional rows first), so the conditional and the unconditional
passes each carry their own state, as in the official sampler's separate cond/uncond caches.
"""
from __future__ import annotations

import torch
from torch import nn


class ReuseModelFn:
    def __init__(self, model: nn.Module, reuse: bool = True):
        self.model = model
        self.reuse = bool(reuse)
        self.state: dict | None = None

    def reset(self) -> None:
        self.state = None

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        prev = self.state if self.reuse else None
        mask_id = getattr(self.model, "mask_id", None)
        if mask_id is None:
            mask_id = self.model.module.mask_id
        # an all-[MASK] canvas is step 0 of a new generation: nothing to reuse, whatever a caller forgot to reset
        if prev is not None and bool((ids == mask_id).all()):
            prev = None
        if prev is not None and prev["masking"].shape != ids.shape:
            raise ValueError(f"ReuseModelFn: the previous step had ids of shape {list(prev['masking'].shape)} but this "
                             f"call has {list(ids.shape)}; call reset() before a new batch")
        logits, state = self.model(ids, labels, prev=prev, return_state=True)
        self.state = {"feat": state["feat"].detach(), "masking": state["masking"]} if self.reuse else None
        return logits
