"""Fashion-MNIST from its four IDX .gz files (Debian package `dataset-fashion-mnist`, MIT)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_HINT = ("install it with `apt-get install -y dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist/) "
         "or point data.path at a folder holding the four IDX .gz files")


def read_idx(path: str | Path) -> np.ndarray:
    """Read a (gzipped) IDX file into a uint8 array, checking magic number and size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}; {_HINT}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: unreadable or truncated gzip stream ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:head])
    n = int(np.prod(shape))
    if len(raw) - head != n:
        raise ValueError(f"{path}: truncated IDX file: header promises {n} bytes of data for shape {shape}, "
                         f"found {len(raw) - head}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def load_fmnist(root: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (images uint8 [N, 28, 28], labels int64 [N])."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {list(FILES)}, got '{split}'")
    root = Path(root) if root else DEFAULT_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder not found: {root}; {_HINT}")
    img_f, lab_f = FILES[split]
    images, labels = read_idx(root / img_f), read_idx(root / lab_f)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: {img_f} {images.shape} and {lab_f} {labels.shape} do not describe one data set")
    return images, labels.astype(np.int64)


def to_model_range(images_u8: np.ndarray | torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, size, size] in [-1, 1], zero-padded (background is black = -1)."""
    x = torch.as_tensor(np.asarray(images_u8)).float().div(127.5).sub(1.0).unsqueeze(1)
    pad = size - x.shape[-1]
    if pad < 0 or pad % 2:
        raise ValueError(f"image_size {size} must be >= 28 and 28 + an even number")
    return torch.nn.functional.pad(x, (pad // 2,) * 4, value=-1.0)


class FashionMNIST(torch.utils.data.Dataset):
    """Images in [-1, 1] at `size` px with labels; the whole split lives in memory (47 MB as uint8)."""

    def __init__(self, root, split="train", size=32):
        images, labels = load_fmnist(root, split)
        self.images = torch.from_numpy(images.copy())
        self.labels = torch.from_numpy(labels)
        self.size = size

    def __len__(self):
        return len(self.labels)

    def get_batch(self, idx: torch.Tensor) -> dict:
        return {"image": to_model_range(self.images[idx], self.size), "label": self.labels[idx]}

    def __getitem__(self, i):
        b = self.get_batch(torch.tensor([i]))
        return {k: v[0] for k, v in b.items()}
