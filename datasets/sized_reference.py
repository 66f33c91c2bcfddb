"""Real images brought to one H x W by datasets.cover_crop's rule: the reference side of an FID at that size.

`SizedReference(source, height, width, fmnist_dir=None)`: source `fmnist-test` (the Fashion-MNIST test split,
28 x 28 grey, replicated to RGB) or an ImageNet-layout folder (<class>/<images>). `get_batch(idx)` -> {'image':
float [B, 3, H, W] in [-1, 1], 'label'}, as the evaluator's other reference datasets. `source_id()` says what
identifies the source's content cheaply (paths, sizes, modification times) for the cache key of its statistics.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from datasets.cover_crop import cover_center_crop, cover_center_crop_uint8


def _stat(path) -> list:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


class SizedReference:
    def __init__(self, source: str, height: int, width: int, fmnist_dir=None):
        self.source, self.height, self.width = str(source), int(height), int(width)
        if self.source == "fmnist-test":
            from datasets.fmnist import DEFAULT_DIR, FILES, load_fmnist
            self.root = Path(fmnist_dir) if fmnist_dir else DEFAULT_DIR
            self._files = [self.root / f for f in FILES["test"]]
            images, labels = load_fmnist(self.root, "test")
            self.images, self.labels = images, torch.from_numpy(labels)
            self.folder = None
        elif Path(self.source).is_dir():
            from datasets.imagefolder import list_image_folder
            self.folder = self.source
            self.files, labels, _ = list_image_folder(self.source)
            self.labels = torch.tensor(labels, dtype=torch.long)
        else:
            raise ValueError(f"eval.ref_images must be 'fmnist-test' or an image folder (<class>/<images>), "
                             f"got {source!r}")

    def __len__(self) -> int:
        return len(self.labels)

    def source_id(self) -> list:
        if self.folder is None:
            return [self.source] + [_stat(f) for f in self._files]
        root = Path(self.folder)
        return [self.source, len(self.files), _stat(root)] + [_stat(root / d) for d in sorted(
            {f.split("/")[0] for f in self.files})]

    def uint8(self, idx) -> np.ndarray:
        """uint8 [B, H, W, 3] of these indices."""
        idx = [int(i) for i in idx]
        if self.folder is None:
            grey = cover_center_crop_uint8(self.images[idx], self.height, self.width)
            return np.repeat(grey[..., None], 3, axis=-1)
        from datasets.imagefolder import load_rgb
        out = []
        for i in idx:
            path = os.path.join(self.folder, self.files[i])
            try:
                out.append(cover_center_crop(load_rgb(path), self.height, self.width))
            except Exception as e:  # noqa: BLE001 - a reference set with holes would silently change the stats
                raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from None
        return np.stack(out)

    def get_batch(self, idx: torch.Tensor) -> dict:
        arr = torch.from_numpy(self.uint8(idx.tolist())).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return {"image": arr, "label": self.labels[idx]}
