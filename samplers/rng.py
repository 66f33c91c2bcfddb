"""`sample.rng`: where a family's sampling randomness comes from. One table and one check for every family.

  per_row   sample i from (seed, i) alone: the same image for any process count and batch size, resumable
  official  the official single-process sampler's random stream for this seed (its batches in order, one process)
"""
from __future__ import annotations

RNGS = ("per_row", "official")


def sample_rng(cfg) -> str:
    """cfg.sample.rng, checked against RNGS."""
    rng = str(cfg.sample.rng)
    if rng not in RNGS:
        raise ValueError(f"sample.rng must be one of {', '.join(RNGS)}, got '{rng}'")
    return rng


def one_process(world_size: int, why: str) -> None:
    """sample.rng=official replays one process's stream: `why` says how the official code seeds several."""
    if world_size > 1:
        raise ValueError(f"sample.rng=official replays the official sampler's stream of one process: run with 1 "
                         f"process, not {world_size} ({why})")
