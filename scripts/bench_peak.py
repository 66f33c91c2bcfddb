"""This machine's matmul peak per dtype: the yardstick the benchmarks hold each path's FLOP/s against (a bf16 path
against the bf16 peak, an fp32 path against the fp32 peak, measured in the same run)."""
from __future__ import annotations

import sys
import time

import torch
from loguru import logger

PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def best_time(fn, iters: int) -> float:
    """Fastest of `iters` calls after one warm-up call: on a shared machine the fastest is the least disturbed."""
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak(word: str, n: int = 2048, reps: int = 3) -> float:
    """GFLOP/s of the best of `reps` n x n x n matmuls in dtype `word` (fp32 | bf16 | fp16) on the CPU."""
    dtype = PEAK_DTYPES[word]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / best_time(lambda: torch.mm(a, b), reps) / 1e9


def matmul_peaks(words, n: int = 2048, reps: int = 3, before: dict | None = None) -> dict[str, float]:
    """{word: GFLOP/s} for each dtype word; with `before` (an earlier measurement) the higher of the two is kept,
    since a loaded moment can only understate the peak."""
    out = {w: matmul_peak(w, n, reps) for w in dict.fromkeys(words)}
    if before:
        out = {w: max(v, before.get(w, 0.0)) for w, v in out.items()}
    return out


def quiet_logs() -> None:
    """Library log lines (e.g. the precision choice) at INFO and above, message only, so tables stay readable."""
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="  (log) {message}")
