"""Semantic teachers for the column tokenizer's alignment loss. A teacher is any module called as
`teacher(images, size) -> (B, C, h, w)`: frozen features of images in [-1, 1] on an h x w grid (`size`, the grid of
the tokenizer's semantic decoder output), compared with it by `column_losses.semantic_term`.

The release's teacher is DINOv2 ViT-B/14: images mapped to [0, 1], ImageNet-normalised, bicubically resized to
14h x 14w (224 x 224 for the 16 x 16 grid of 256-pixel images), the position embedding resampled once from its
37 x 37 grid to h x w (bicubic, antialiased), and the final-normed patch tokens laid out as a (B, 768, h, w) map.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from models.eqtok.dino_disc import IMAGENET_MEAN, IMAGENET_STD
from models.eqtok.vit import ViT, load_dinov2


class Dinov2Teacher(nn.Module):
    def __init__(self, backbone: ViT):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.channels = backbone.embed_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, size) -> torch.Tensor:
        gh, gw = (int(s) for s in size)
        p = self.backbone.patch_size
        x = ((images.float() + 1) / 2 - self.mean) / self.std  # grey images broadcast to 3 channels
        x = F.interpolate(x, size=(p * gh, p * gw), mode="bicubic")
        tok = self.backbone.patch_tokens(x)  # (B, gh*gw, C), row-major over the grid
        return tok.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


def build_teacher(kind: str, path=None, flavour: str = "vit_base_14") -> nn.Module | None:
    """'none' -> None; 'dinov2' -> Dinov2Teacher from the local file `path`; 'package.module:factory' -> factory(path),
    any module following the teacher protocol."""
    kind = str(kind)
    if kind in ("none", "", "None"):
        return None
    if kind == "dinov2":
        return Dinov2Teacher(load_dinov2(path, flavour))
    if ":" in kind:
        mod, name = kind.split(":", 1)
        return getattr(importlib.import_module(mod), name)(path)
    raise ValueError(f"loss.semantic_teacher must be none, dinov2 or package.module:factory, got {kind!r}")
