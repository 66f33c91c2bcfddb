"""Deterministic image preprocessing of the feature-extraction pipelines (PIL in, uint8 arrays out).

- `center_crop_arr`: the ADM protocol used by AutoNAT/ENAT and NiT's fixed-size data: halve with a BOX filter while
  the short side is at least twice the target, BICUBIC-resize the short side to the target (sizes rounded), then
  take the central square.
- `native_resolution_size` / `native_resolution_resize`: NiT's native-resolution rule: keep the aspect ratio, floor
  both sides to a multiple of the autoencoder stride (32 for DC-AE f32), and above an area of max_size**2 first
  rescale to that area.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    img = pil_image
    while min(img.size) >= 2 * image_size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = image_size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def native_resolution_size(width: int, height: int, multiple: int = 32, max_size: int = 2048) -> tuple[int, int]:
    """(new_w, new_h): e.g. 580x403 -> 576x384 with multiple 32."""
    if width * height >= max_size * max_size:
        scale = math.sqrt(max_size * max_size / (width * height))
        width, height = width * scale, height * scale
    return max(1, int(width // multiple)) * multiple, max(1, int(height // multiple)) * multiple


def native_resolution_resize(pil_image: Image.Image, multiple: int = 32, max_size: int = 2048) -> np.ndarray:
    size = native_resolution_size(*pil_image.size, multiple=multiple, max_size=max_size)
    img = pil_image if size == pil_image.size else pil_image.resize(size, resample=Image.BICUBIC)
    return np.asarray(img)


def to_unit(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [0, 1] (the official MAGE/NAT encoder input)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


def to_signed(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1] (the project tokenizer interface, DC-AE)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
