"""Run a block with a limited number of OpenBLAS threads (numpy/scipy's bundled BLAS), where supported.

LAPACK's symmetric eigensolvers spend most of their time in the tridiagonal reduction, a chain of small BLAS-2 calls
that synchronise the BLAS threads at every step. When another process holds a core, that synchronisation dominates:
a 2048-d `eigvalsh` measured 1.5-1.6 s with 2 threads against 0.6-0.7 s with 1 thread on a 2-core machine with one
core busy (earlier, on a more loaded one, 4-13 s against 1.8-2.7 s); on the idle machine 2 threads took 0.34 s
against 0.6 s. So `eigensolver_blas()` gives the eigensolver the cores that the load average says are idle, at
least one. Matrix products are not affected and keep all threads. Uses OpenBLAS's thread-local
`openblas_set_num_threads_local` (>= 0.3.27) on every OpenBLAS loaded in the process (Linux: found via
/proc/self/maps); elsewhere it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os


@functools.lru_cache(maxsize=1)
def _thread_setters() -> tuple:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in os.path.basename(line.split()[-1]).lower()}
    except OSError:
        return ()
    setters = []
    for path in sorted(p for p in paths if os.path.isfile(p)):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        setters.append(fn)
    return tuple(setters)


def idle_cores() -> int:
    """Cores of this process's affinity set not used by other work: count − (1-minute load − 1), the 1 being this
    process itself; at least 1. The load average lags by up to a minute: it only has to tell busy from idle."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 1
    return max(1, min(n, int(n - max(load - 1.0, 0.0) + 0.5)))


def eigensolver_blas():
    return limited_blas(idle_cores())


@contextlib.contextmanager
def limited_blas(threads: int):
    setters = _thread_setters()
    previous = [fn(max(1, int(threads))) for fn in setters]
    try:
        yield
    finally:
        for fn, n in zip(setters, previous):
            fn(n)
