"""Images as the project hands them to metrics and files: uint8 [N, C, H, W]; PNG grids written atomically."""
from __future__ import annotations

import math

import torch

from core.io import atomic_write


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 with rounding."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def grid_image(images_u8: torch.Tensor, rows: int):
    """uint8 [N, C, H, W] -> one PIL image with `rows` rows and a 1-px black border around every tile."""
    from PIL import Image
    n, c, h, w = images_u8.shape
    cols = math.ceil(n / rows)
    canvas = torch.zeros(c, rows * (h + 2), cols * (w + 2), dtype=torch.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        canvas[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = images_u8[k]
    arr = canvas.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if c == 1 else arr)


def save_png(image, path) -> None:
    atomic_write(path, lambda p: image.save(p, format="PNG"), suffix=".png")


def save_grid(images_u8: torch.Tensor, rows: int, path) -> None:
    save_png(grid_image(images_u8, rows), path)
