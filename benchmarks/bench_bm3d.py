"""BM3D over a folder: parallel first pass vs a sequential loop, and a cached rerun."""

from __future__ import annotations

import tempfile
import time

N_IMAGES = 12
SIZE = 224
STEPS = [("bm3d_denoise", {"sigma": 0.05})]

_CACHE: dict = {}


def _busy(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def machine_parallel_ceiling(workers: int, n: int = 6_000_000) -> float:
    """Speed-up of ``workers`` processes over one on pure-Python busy work: what the cores give.

    On the 2-vCPU machines of this project it measured about 1.4 (not 2): the bm3d-parallel
    target of 1.7 assumes two full cores.
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


def _measure() -> dict:
    import os

    from osteo_tf import preprocessing
    from osteo_tf.config import cache_dir
    from osteo_tf.io import load_xray

    from _data import png_folder

    folder = png_folder(N_IMAGES, SIZE, cache_dir() / "bench", seed=1)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    t0 = time.perf_counter()
    seq = [preprocessing.apply_steps(load_xray(p), STEPS) for p in paths]
    sequential = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        cache = preprocessing.DiskCache(tmp)
        t0 = time.perf_counter()
        par = preprocessing.cached_apply_steps(paths, STEPS, cache=cache, n_jobs=os.cpu_count())
        parallel = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = preprocessing.cached_apply_steps(paths, STEPS, cache=cache, n_jobs=os.cpu_count())
        rerun = time.perf_counter() - t0
    same = all((a == b).all() for a, b in zip(seq, par)) and all((a == b).all() for a, b in zip(par, again))
    return {"sequential": sequential, "parallel": parallel, "rerun": rerun, "same": same, "cores": os.cpu_count(),
            "ceiling": machine_parallel_ceiling(os.cpu_count() or 1)}


def _results() -> dict:
    if not _CACHE:
        _CACHE.update(_measure())
    return _CACHE


def parallel_first_pass() -> dict:
    r = _results()
    return {"baseline": r["sequential"], "ours": r["parallel"], "unit": "s", "ratio": r["sequential"] / r["parallel"],
            "target": 1.7, "details": {"images": N_IMAGES, "size": SIZE, "cores": r["cores"],
                                        "identical_outputs": r["same"],
                                        "machine_parallel_ceiling": round(r["ceiling"], 2),
                                        "baseline_is": "a Python loop of load_xray + bm3d_denoise",
                                        "ours_is": "preprocessing.cached_apply_steps, process pool, empty cache"}}


def cached_rerun() -> dict:
    r = _results()
    return {"baseline": r["parallel"], "ours": r["rerun"], "unit": "s", "ratio": r["parallel"] / r["rerun"],
            "target": 50.0, "details": {"images": N_IMAGES, "identical_outputs": r["same"],
                                         "note": "rerun with the same parameters reads the content-addressed disk cache"}}


BENCHMARKS = {"bm3d-parallel": parallel_first_pass, "bm3d-cached-rerun": cached_rerun}
