"""Deterministic batches of rows: the rows of global step s are a pure function of (seed, s), so a resumed run sees
exactly the batches an uninterrupted run would have seen, and each rank takes its own slice."""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from core.seeding import step_seed


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


def row_batches(ds, cfg, step: int, rank: int, world: int,
                augment: Callable[[dict, torch.Generator], dict] | None = None, draws: bool = False) -> list[dict]:
    """`Family.batches` for datasets of rows (`len(ds)`, `ds.get_batch(idx)`): train.batch_size rows per global
    step, split over ranks and train.grad_accum micro-batches; `augment(batch, generator)` draws from a generator
    seeded by (seed, rank, step, micro-batch). draws=True: the dataset makes its own random draws (crops, flips,
    noise) in `ds.get_batch(idx, generator)`, from a generator seeded by that seed + 1."""
    seed, accum = int(cfg.seed), int(cfg.train.grad_accum)
    out = []
    for mi, idx in enumerate(rank_micro_batches(step, int(cfg.train.batch_size), len(ds), seed, rank, world, accum)):
        if draws:  # + 1: the seeds these datasets were always served with (another seed, other batches)
            batch = ds.get_batch(idx, torch.Generator().manual_seed(step_seed(seed, rank, step, mi) + 1))
        else:
            batch = ds.get_batch(idx)
        if augment is not None:
            batch = augment(batch, torch.Generator().manual_seed(step_seed(seed, rank, step, mi)))
        out.append(batch)
    return out


def drawing_row_batches(ds, cfg, step: int, rank: int, world: int) -> list[dict]:
    """`Family.batches` for datasets of rows that draw their own randomness (row_batches with draws=True)."""
    return row_batches(ds, cfg, step, rank, world, draws=True)


def hflip_batch(batch: dict, gen: torch.Generator) -> dict:
    """Random horizontal flip of half the images (per-row coin from a seeded generator)."""
    img = batch["image"]
    flip = torch.rand(img.shape[0], generator=gen) < 0.5
    img = torch.where(flip[:, None, None, None], img.flip(-1), img)
    return {**batch, "image": img}
