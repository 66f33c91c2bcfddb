"""Run a block with single-threaded OpenBLAS (numpy/scipy's bundled BLAS), where supported.

LAPACK's symmetric eigensolvers spend most of their time in the tridiagonal reduction, a chain of small BLAS-2 calls
that synchronise the BLAS threads at every step. On a shared or busy CPU that synchronisation dominates: a 2048-d
`eigh` measured 4-13 s with 2 threads against 1.8-2.7 s with 1 thread on a loaded 2-core machine. Matrix products
are not affected and keep all threads. Uses OpenBLAS's thread-local `openblas_set_num_threads_local` (>= 0.3.27)
on every OpenBLAS loaded in the process (Linux: found via /proc/self/maps); elsewhere it does nothing.
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


@contextlib.contextmanager
def single_threaded_blas():
    setters = _thread_setters()
    previous = [fn(1) for fn in setters]
    try:
        yield
    finally:
        for fn, n in zip(setters, previous):
            fn(n)
