"""What this machine's cores give: helpers that spawned worker processes can import.

Functions sent to a ``spawn`` pool are pickled by module name; the ``bench_*.py`` files are loaded
from their paths under private names that a child process cannot import, so the work functions
live here (``benchmarks/`` is on ``sys.path`` in the runner and, through ``spawn``, in its children).
"""

from __future__ import annotations

import time


def _busy(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def machine_parallel_ceiling(workers: int, n: int = 6_000_000) -> float:
    """Speed-up of ``workers`` processes over one on pure-Python busy work: what the cores give.

    Shared or hyper-threaded virtual CPUs give less than ``workers``; the bm3d-parallel target of
    1.7 assumes two full cores, so this ceiling is reported beside that benchmark's ratio.
    """
    import multiprocessing

    t0 = time.perf_counter()
    for _ in range(workers):
        _busy(n)
    serial = time.perf_counter() - t0
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_busy, [1000] * workers)  # start the workers before timing
        t0 = time.perf_counter()
        pool.map(_busy, [n] * workers)
        parallel = time.perf_counter() - t0
    return serial / parallel
