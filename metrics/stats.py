"""Reference statistics from images: any iterable of uint8 batches, or an image folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core import dist
from metrics.features import FeatureCollector
from metrics.evaluator import features_to_stats
from metrics.inception import FIDInception
from metrics.preprocess import INCEPTION_SIZE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def stats_from_images(batches, inception: FIDInception, mode: str = "pytorch-fid", spatial: bool = True,
                      device=None, dtype: str = "fp32", channels_last: bool = False, batch_size: int = 50,
                      size: int = INCEPTION_SIZE, distribute: bool = True) -> dict:
    """{'n', 'mu', 'sigma'[, 'mu_s', 'sigma_s']} (float64, ddof 1) of the pool3 (and sFID) features of `batches`.

    batches: iterable of uint8 [B, 3|1, H, W] tensors (or float [0, 1] in 'pytorch-fid' mode). Under torchrun every
    rank iterates the same sequence and, with distribute=True, runs the Inception on every world_size-th batch only;
    all ranks return the same statistics (collective call). Write them with metrics.files.save_stats on rank 0.
    """
    feats = ("pool3", "spatial") if spatial else ("pool3",)
    coll = FeatureCollector(inception, mode, feats, device, dtype, channels_last, batch_size, size)
    r, w = (dist.rank(), dist.world_size()) if distribute else (0, 1)
    for i, batch in enumerate(batches):
        if i % w == r:
            coll.update(batch)
    return features_to_stats(coll.gather())


def list_images(folder) -> list[Path]:
    """Image files under `folder`, recursively, in sorted path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return files


def iter_image_folder(folder, batch_size: int = 50):
    """uint8 [B, 3, H, W] batches of the folder's images (converted to RGB); a batch only holds images of one size,
    so a folder of mixed sizes yields shorter batches where the size changes."""
    pending, pending_size = [], None
    for path in list_images(folder):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"cannot read image {path}: {e}") from e
        if pending and (arr.shape != pending_size or len(pending) == batch_size):
            yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2)
            pending = []
        pending.append(arr)
        pending_size = arr.shape
    if pending:
        yield torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2)
