"""Pre-extracted token files in the official layout: int64 .npy [N, 1 + h*w], column 0 the class label."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class TokenFile(torch.utils.data.Dataset):
    def __init__(self, path, codebook_size: int | None = None, num_classes: int | None = None, mmap: bool = True):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"token file not found: {path} (make it with extract_imagenet_feature.py)")
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            # numpy's own text for a non-.npy file suggests allow_pickle, which must not be followed for a data file
            why = "not an .npy array file" if "pickle" in str(e) else f"{type(e).__name__}: {' '.join(str(e).split())}"
            raise ValueError(f"{path}: not a readable .npy token file ({why}); expected int64 [N, 1 + h*w], label "
                             f"first, as extract_imagenet_feature.py writes") from None
        if arr.ndim != 2 or arr.shape[1] < 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: expected an integer array [N, 1 + h*w] (label first), got {arr.dtype} "
                             f"{arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"{path}: holds no rows (was every image unreadable when it was extracted?); delete it "
                             f"and run extract_imagenet_feature.py again")
        self.path, self.arr = path, arr
        self.seq_len = arr.shape[1] - 1
        if codebook_size is not None or num_classes is not None:
            probe = np.asarray(arr[: min(len(arr), 4096)])
            if codebook_size is not None and (probe[:, 1:].min() < 0 or probe[:, 1:].max() >= codebook_size):
                raise ValueError(f"{path}: token ids outside [0, {codebook_size}) (codebook size of the model)")
            if num_classes is not None and (probe[:, 0].min() < 0 or probe[:, 0].max() >= num_classes):
                raise ValueError(f"{path}: labels outside [0, {num_classes})")

    def __len__(self):
        return len(self.arr)

    def get_batch(self, idx: torch.Tensor) -> dict:
        idx = idx.numpy()
        rows = torch.from_numpy(np.asarray(self.arr[idx], dtype=np.int64))
        return {"tokens": rows[:, 1:], "label": rows[:, 0]}


def save_tokens(path, labels: np.ndarray, tokens: np.ndarray) -> None:
    """Write the official layout atomically."""
    import os
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.concatenate([labels.reshape(-1, 1).astype(np.int64), tokens.reshape(len(tokens), -1).astype(np.int64)], 1)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)


class SyntheticTokens(torch.utils.data.Dataset):
    """Class-dependent random token rows for tests: row i of class c is a noisy copy of a per-class pattern."""

    def __init__(self, n=512, seq_len=16, vocab=16, num_classes=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        patterns = torch.randint(0, vocab, (num_classes, seq_len), generator=g)
        self.labels = torch.arange(n) % num_classes
        noise = torch.randint(0, vocab, (n, seq_len), generator=g)
        keep = torch.rand(n, seq_len, generator=g) < 0.8
        self.tokens = torch.where(keep, patterns[self.labels], noise)

    def __len__(self):
        return len(self.labels)

    def get_batch(self, idx):
        return {"tokens": self.tokens[idx], "label": self.labels[idx]}
