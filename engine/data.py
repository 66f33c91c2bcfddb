"""Datasets from config, and a deterministic index stream: the indices of global step s are a pure function
of (seed, s), so a resumed run sees exactly the batches an uninterrupted run would have seen."""
from __future__ import annotations

import functools

import numpy as np
import torch


def build_dataset(cfg, split: str | None = None):
    d = cfg.data
    split = split or d.split
    if d.kind == "fmnist":
        from datasets.fmnist import FashionMNIST
        return FashionMNIST(d.path, split, size=int(d.image_size))
    if d.kind == "tokens":
        from datasets.tokens import TokenFile
        if not d.path:
            raise ValueError("data.path is empty: set it to a token .npy file (data.path=... on the command line)")
        return TokenFile(d.path)
    if d.kind == "synthetic":
        from datasets.tokens import SyntheticTokens
        return SyntheticTokens(int(d.synthetic_n), int(d.synthetic_seq_len), int(d.synthetic_vocab),
                               int(d.num_classes), seed=0)
    raise ValueError(f"data.kind '{d.kind}' is not one of: fmnist, tokens, synthetic")


@functools.lru_cache(maxsize=2)
def _epoch_perm(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batch_indices(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """Rows of global batch `step`: consecutive slices of per-epoch permutations (without replacement)."""
    start = step * batch
    out, pos = [], start
    while pos < start + batch:
        epoch, off = divmod(pos, n)
        take = min(n - off, start + batch - pos)
        out.append(_epoch_perm(n, seed, epoch)[off:off + take])
        pos += take
    return np.concatenate(out)


def rank_micro_batches(step, global_bs, n, seed, rank, world, accum) -> list[torch.Tensor]:
    idx = global_batch_indices(step, global_bs, n, seed)
    per_rank = global_bs // world
    mine = idx[rank * per_rank:(rank + 1) * per_rank]
    return [torch.from_numpy(c.copy()) for c in np.array_split(mine, accum)]


def hflip_batch(batch: dict, gen: torch.Generator) -> dict:
    """Random horizontal flip of half the images (per-row coin from a seeded generator)."""
    if "image" not in batch:
        return batch
    img = batch["image"]
    flip = torch.rand(img.shape[0], generator=gen) < 0.5
    img = torch.where(flip[:, None, None, None], img.flip(-1), img)
    return {**batch, "image": img}
