"""The one interface every image tokenizer of the project offers to models, samplers and scripts.

A tokenizer is frozen: it stays in eval mode (``train()`` is a no-op), its parameters need no grad, and
``encode``/``decode`` run without autograd. Images are float [B, C, H, W] in [-1, 1] on both sides.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from core.loading import CheckpointError, load_strict, strip_prefixes  # noqa: F401 (re-exported)


class Tokenizer(nn.Module, abc.ABC):
    kind: str = "discrete"             # 'discrete' -> Long codes [B, h, w]; 'continuous' -> Float latents [B, c, h, w]
    codebook_size: int | None = None   # discrete only
    latent_channels: int | None = None  # continuous only
    downsample: int = 1
    in_channels: int = 3
    scaling_factor: float = 1.0

    def freeze(self) -> "Tokenizer":
        super().train(False)
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Tokenizer":
        # an engine calling model.train() on a parent module must not switch a frozen tokenizer to training
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.downsample, width // self.downsample

    def grid_mask(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """Bool[B, H, W] pixels to regenerate -> Bool on the code grid [B, H/d, W/d] (d = downsample): a code is
        regenerated when ANY of its pixels is (a kept code must not carry pixels that were asked to change)."""
        if pixel_mask.dim() != 3:
            raise ValueError(f"grid_mask expects a pixel mask [B, H, W], got shape {tuple(pixel_mask.shape)}")
        b, h, w = pixel_mask.shape
        d = self.downsample
        if h % d or w % d:
            raise ValueError(f"{type(self).__name__}: a mask of {h}x{w} pixels is not on the code grid (H and W "
                             f"must be divisible by {d})")
        return pixel_mask.bool().reshape(b, h // d, d, w // d, d).any(dim=4).any(dim=2)

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}.encode expects images [B, {self.in_channels}, H, W] in [-1, 1], "
                             f"got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"{type(self).__name__}.encode needs H and W divisible by {self.downsample}, got {h}x{w}")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self._encode(images)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._decode(z).clamp_(-1.0, 1.0)

    @abc.abstractmethod
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """codes or latents of images already checked by encode()"""

    @abc.abstractmethod
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """images (before clamping) of codes or latents"""

    def describe(self) -> dict:
        out = dict(kind=self.kind, downsample=self.downsample, in_channels=self.in_channels,
                   scaling_factor=self.scaling_factor)
        out["codebook_size" if self.kind == "discrete" else "latent_channels"] = (
            self.codebook_size if self.kind == "discrete" else self.latent_channels)
        return out


# one strict loader for the whole project (core.loading); the old name stays importable
CheckpointMismatchError = CheckpointError
