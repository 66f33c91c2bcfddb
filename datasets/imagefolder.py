"""ImageNet-layout folders: `root/<class>/.../<image>`, class folders sorted by name give labels 0..C-1.

Used by feature extraction. Image order is fixed by sorted class names, then sorted paths inside each class, so
every process of a distributed run sees the same global index for the same file.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def list_image_folder(root: str) -> tuple[list[str], list[int], list[str]]:
    """-> (paths relative to root, labels, class names)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} not found; expected the ImageNet layout "
                                f"<path>/<split>/<class folder>/<images>")
    classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        flat = any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in os.listdir(root))
        hint = (" (it holds images directly: sort them into one folder per class first, as for ImageNet's val "
                "split)") if flat else ""
        raise ValueError(f"{root} holds no class folders; expected <class folder>/<images> inside it{hint}")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in filenames:
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
        found.sort()
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"{root}: no images with extensions {sorted(IMAGE_EXTENSIONS)} in its class folders")
    return files, labels, classes


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        img.load()  # decode now so truncated files fail here, inside the caller's error handling
        return img.convert("RGB")


class ImageListDataset(torch.utils.data.Dataset):
    """Yields (index, prepared arrays or None, info); a file that cannot be read gives None and the error text.

    `prepare(pil_image) -> dict[str, np.ndarray]` turns one decoded image into what the consumer needs.
    """

    def __init__(self, root: str, files: list[str], prepare: Callable[[Image.Image], dict]):
        self.root, self.files, self.prepare = root, files, prepare

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = os.path.join(self.root, self.files[i])
        try:
            img = load_rgb(path)
            info = {"ori_w": img.size[0], "ori_h": img.size[1]}
            return i, self.prepare(img), info
        except Exception as e:  # unreadable, truncated, not an image: reported and skipped by the caller
            return i, None, {"error": f"{type(e).__name__}: {e}"}


def collate_list(items):
    return items


def stack_uint8(arrays: list[np.ndarray]) -> torch.Tensor:
    """list of HWC uint8 arrays of equal shape -> uint8 tensor [B, C, H, W]."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class CenterCropFolder:
    """An ImageNet-layout folder as rows of images: ADM center crop to `size`, [-1, 1] floats (reference statistics
    and tokenizer reconstructions of real images). An unreadable file is an error naming it: a reference set with
    holes would silently change the statistics."""

    def __init__(self, root: str, size: int):
        from datasets.transforms import center_crop_arr
        self.root, self.size, self._crop = root, int(size), center_crop_arr
        self.files, labels, self.classes = list_image_folder(root)
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def get_batch(self, idx: torch.Tensor) -> dict:
        arrays = []
        for i in idx.tolist():
            path = os.path.join(self.root, self.files[i])
            try:
                arrays.append(self._crop(load_rgb(path), self.size))
            except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input file
                raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from None
        images = stack_uint8(arrays).float().div(127.5).sub(1.0)
        return {"image": images, "label": self.labels[idx]}
