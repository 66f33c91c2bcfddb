"""Shared by the NiT tests."""
import math

import torch

from models.nit import NiT


def randomized(model: NiT, seed: int = 0) -> NiT:
    """A model whose every weight (including the zero-initialised adaLN/output layers) is random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 1.0 / math.sqrt(p.shape[-1])))
    return model.eval()
