"""Training images for column models (the column tokenizer and the column AR generator): every image is brought to a
fixed height and a crop `width` pixels wide, as the release does (Resize(256) -> RandomCrop(256) -> HFlip).

- `ImageFolderColumns`: an ImageNet-layout folder (labels = sorted class folders). The short side is resized to
  `height` (bicubic), or more when that leaves the image narrower than `width`, then a random (height, width) crop.
- `FashionMNISTColumns`: the demo data, 28 px padded to `height`, tiled or cropped to `width`.
- `SyntheticColumns`: class-patterned random images (tests).
Every `get_batch(idx, generator)` draws its crops and flips from `generator`, so a batch is a function of
(indices, generator) alone.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from datasets.imagefolder import list_image_folder, load_rgb


def _flip(images: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    if not hflip:
        return images
    flip = torch.rand(images.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def resize_for_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Smallest bicubic resize (aspect kept) that is at least height x width, with the short side >= height."""
    w, h = img.size
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    return img if size == img.size else img.resize(size, resample=Image.BICUBIC)


class ImageFolderColumns:
    def __init__(self, root: str, height: int, width: int, hflip: bool = True):
        self.root, self.height, self.width, self.hflip = root, int(height), int(width), bool(hflip)
        self.files, self.labels, self.classes = list_image_folder(root)

    def __len__(self):
        return len(self.files)

    def get_batch(self, idx: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        gen = gen or torch.Generator().manual_seed(0)
        out = []
        for i in idx.tolist():
            img = resize_for_crop(load_rgb(os.path.join(self.root, self.files[i])), self.height, self.width)
            w, h = img.size
            top = int(torch.randint(h - self.height + 1, (1,), generator=gen))
            left = int(torch.randint(w - self.width + 1, (1,), generator=gen))
            arr = np.asarray(img)[top:top + self.height, left:left + self.width]
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        images = torch.stack(out).float().div_(127.5).sub_(1.0)
        labels = torch.tensor([self.labels[i] for i in idx.tolist()], dtype=torch.long)
        return {"image": _flip(images, gen, self.hflip), "label": labels}


class FashionMNISTColumns:
    """Fashion-MNIST at `height` px (28 padded); a crop wider than the padded image tiles it side by side."""

    def __init__(self, root, split: str, height: int, width: int, hflip: bool = True):
        from datasets.fmnist import FashionMNIST
        self.ds = FashionMNIST(root, split, size=int(height))
        self.height, self.width, self.hflip = int(height), int(width), bool(hflip)

    def __len__(self):
        return len(self.ds)

    def get_batch(self, idx: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        b = self.ds.get_batch(idx)
        x = b["image"]
        reps = -(-self.width // x.shape[-1])
        x = x.repeat(1, 1, 1, reps)[..., :self.width]
        gen = gen or torch.Generator().manual_seed(0)
        return {"image": _flip(x, gen, self.hflip), "label": b["label"]}


class SyntheticColumns:
    """n images of `classes` classes: class c is a vertical stripe pattern of period c + 2 plus noise."""

    def __init__(self, n: int, classes: int, height: int, width: int, channels: int = 3):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % classes
        cols = torch.arange(width)
        base = torch.stack([((cols // (c + 2)) % 2).float() * 1.6 - 0.8 for c in range(classes)])
        self.images = base[self.labels][:, None, None, :].expand(n, channels, height, width).clone()
        self.images += 0.1 * torch.randn(self.images.shape, generator=g)
        self.images.clamp_(-1, 1)

    def __len__(self):
        return len(self.labels)

    def get_batch(self, idx: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        return {"image": self.images[idx], "label": self.labels[idx]}
