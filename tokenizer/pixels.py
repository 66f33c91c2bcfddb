"""The identity tokenizer: for generators that work in pixel space, images are their own latents."""
from __future__ import annotations

import torch

from tokenizer.base import Tokenizer


class PixelTokenizer(Tokenizer):
    kind = "continuous"
    downsample = 1
    latent_channels = 3  # RGB; an instance for grey images has 1

    def __init__(self, channels: int | None = None):
        super().__init__()
        self.in_channels = self.latent_channels = int(self.latent_channels if channels is None else channels)
        self.freeze()

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4:
            raise ValueError(f"pixel tokenizer decodes images [B, C, H, W], got shape {tuple(z.shape)}")
        return z.float().clone()
