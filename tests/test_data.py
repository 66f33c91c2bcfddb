import gzip
import struct

import numpy as np
import pytest
import torch

from datasets.fmnist import FashionMNIST, read_idx
from datasets.tokens import TokenFile, save_tokens
from datasets.sampling import global_batch_indices, rank_micro_batches


def write_idx(path, arr, truncate=0):
    raw = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw[: len(raw) - truncate])


def make_fmnist(root, n=20, truncate=0):
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), truncate)
    write_idx(root / "train-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_fmnist_reads_and_pads(tmp_path):
    make_fmnist(tmp_path)
    ds = FashionMNIST(tmp_path, "train", size=32)
    b = ds.get_batch(torch.arange(5))
    assert b["image"].shape == (5, 1, 32, 32) and b["label"].tolist() == [0, 1, 2, 3, 4]
    assert b["image"][:, :, :2].eq(-1).all() and b["image"].max() <= 1


def test_truncated_idx_names_file(tmp_path):
    make_fmnist(tmp_path, truncate=100)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: truncated IDX file"):
        FashionMNIST(tmp_path, "train")


def test_truncated_gzip_stream(tmp_path):
    make_fmnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        read_idx(p)


def test_missing_data_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.*dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "nope", "train")


def test_token_file_roundtrip_and_checks(tmp_path):
    labels = np.arange(6) % 3
    toks = np.arange(6 * 4).reshape(6, 4) % 7
    save_tokens(tmp_path / "t.npy", labels, toks)
    ds = TokenFile(tmp_path / "t.npy", codebook_size=7, num_classes=3)
    b = ds.get_batch(torch.tensor([1, 4]))
    assert b["tokens"].tolist() == toks[[1, 4]].tolist() and b["label"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="outside"):
        TokenFile(tmp_path / "t.npy", codebook_size=5)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        TokenFile(tmp_path / "missing.npy")


def test_batches_are_a_function_of_step():
    a = global_batch_indices(7, 16, 50, seed=3)
    assert (a == global_batch_indices(7, 16, 50, seed=3)).all() and len(set(a.tolist())) == 16
    # one epoch is a permutation: steps covering 50 rows without overlap inside the epoch
    first = np.concatenate([global_batch_indices(s, 10, 50, 0) for s in range(5)])
    assert sorted(first.tolist()) == list(range(50))
    # ranks split the global batch, micro-batches split the rank's share
    parts = [rank_micro_batches(2, 12, 50, 0, r, 2, 3) for r in range(2)]
    flat = torch.cat([torch.cat(p) for p in parts]).numpy()
    assert (flat == global_batch_indices(2, 12, 50, 0)).all() and all(len(m) == 2 for p in parts for m in p)
