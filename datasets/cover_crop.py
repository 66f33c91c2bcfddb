"""The one rule that brings a real image to any H x W for reference statistics (and the NiT demo's training data).

`cover_center_crop(img, H, W)`: scale the image, keeping its aspect ratio, by s = max(H / h, W / w) so that it
just covers H x W (the side that binds lands exactly on its target), then cut the central H x W window. Before the
BICUBIC resize the image is halved with a BOX filter while it stays at least twice the covering size (s <= 1/2),
as ADM does. For H = W this is exactly ADM's center crop (`datasets.transforms.center_crop_arr`), which NiT uses for
its fixed-size 256/512 data; for H != W it is the same operation with a rectangular window. NiT's native-resolution
rule keeps the whole image and floors its sides to multiples of 32, which does not yield a chosen H x W, and its
paper does not say how the real images of non-square FIDs were made, so the crop generalises the square protocol
instead: nothing is stretched and nothing is padded.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

RULE = "cover-center-crop-bicubic-v1"  # names the rule in cache keys: a change of rule must change the name


def cover_size(w: int, h: int, height: int, width: int) -> tuple[int, int]:
    """(new_w, new_h) of a w x h image scaled to cover width x height, aspect ratio kept."""
    s = max(height / h, width / w)
    new_w, new_h = max(width, round(w * s)), max(height, round(h * s))
    return new_w, new_h


def cover_center_crop(img: Image.Image, height: int, width: int) -> np.ndarray:
    """PIL image -> array (height, width[, C]) by the module's rule."""
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    while img.size[0] >= 2 * width and img.size[1] >= 2 * height:  # s <= 1/2; for H = W: ADM's min side >= 2 S
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    size = cover_size(*img.size, height, width)
    if size != img.size:
        img = img.resize(size, resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    return arr[top:top + height, left:left + width]


def cover_center_crop_uint8(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [N, h, w] (grey) or [N, h, w, 3] -> uint8 [N, height, width(, 3)], image by image."""
    return np.stack([cover_center_crop(Image.fromarray(a), height, width) for a in images])
