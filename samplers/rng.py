"""Per-row random streams: sample i depends only on (seed, i), whatever the batch or the number of processes."""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch


def row_seed(seed: int, index: int) -> int:
    """A 63-bit seed for row `index` of a run seeded with `seed` (hash, so nearby seeds give unrelated streams)."""
    digest = hashlib.sha256(f"{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def row_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per sample index."""
    return [torch.Generator(device="cpu").manual_seed(row_seed(seed, i)) for i in indices]


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
