"""The record through which the engine drives a model family without knowing its internals."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class TrainContext:
    """What a family's loss may need besides the model and the batch."""
    cfg: Any                      # the resolved OmegaConf config
    step: int = 0
    ema: nn.Module | None = None  # EMA copy (ENAT reuse training runs it to make previous-step features)


@dataclass
class Family:
    name: str
    # flavour name -> builder(**kwargs) -> nn.Module; kwargs come from cfg.model (minus 'family'/'flavour').
    flavours: dict[str, Callable[..., nn.Module]]
    # what a training batch holds: 'tokens' -> {'tokens': Long[B, L], 'label': Long[B]};
    # 'images' -> {'image': Float[B, C, H, W] in [-1, 1], 'label': Long[B]}
    data: str
    # (model, batch, ctx) -> (scalar loss, {name: float}) ; model may be DDP-wrapped, call it, never its internals
    training_loss: Callable[[nn.Module, dict, TrainContext], tuple[torch.Tensor, dict]]
    # extra fields a family wants to expose (samplers, default strategies, ...)
    extras: dict = field(default_factory=dict)
