"""The project's random streams, each a pure function of integers so that nothing needs RNG state to resume.

- Sample rows: row i of a run seeded with s draws from its own CPU generator seeded `s * 1_000_003 + i`, so sample
  i depends only on (s, i), whatever the batch composition or the number of processes. Eval, the periodic sample
  grid, the search and the sampler tests all use `row_generators`.
- Training: micro-batch m of rank r at step t seeds the global torch RNG with `step_seed(s, r, t, m)`, so a resumed
  run repeats the draws of an uninterrupted one.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

ROW_STRIDE = 1_000_003


def row_seed(seed: int, index: int) -> int:
    return int(seed) * ROW_STRIDE + int(index)


def row_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per sample index."""
    return [torch.Generator().manual_seed(row_seed(seed, i)) for i in indices]


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    # one independent stream per (seed, rank, step, micro-batch)
    return (((int(seed) * 1_000_003 + int(rank)) * 1_000_033 + int(step)) * 1_009 + int(micro)) % (2 ** 63 - 1)


def check_generators(generators: Sequence[torch.Generator], batch: int) -> None:
    if len(generators) != batch:
        raise ValueError(f"need one torch.Generator per row: got {len(generators)} generators for {batch} rows")
    for g in generators:
        if not isinstance(g, torch.Generator) or g.device.type != "cpu":
            raise ValueError(f"generators must be CPU torch.Generator objects, got {g!r}")


def uniform_rows(generators: Sequence[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """Float32 [B, *shape] in [0, 1): row i drawn from generators[i] (exactly prod(shape) draws each), then moved to
    `device` so the result does not depend on the device's RNG."""
    rows = [torch.rand(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


def normal_rows(generators: Sequence[torch.Generator], shape: tuple[int, ...], device,
                dtype=torch.float32) -> torch.Tensor:
    """Standard normal [B, *shape], row i from generators[i], drawn on the CPU then moved to `device`."""
    rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)
