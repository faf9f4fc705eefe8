"""A content-addressed disk cache of preprocessed images, and the process pool that fills it.

Expensive preprocessing steps (BM3D: seconds per image) are computed once per input and
parameter set: :func:`map_cached` runs one :data:`osteo_tf.preprocessing.STEPS` function over
many images and :func:`cached_apply_steps` a whole step list, both reading hits from a
:class:`DiskCache` and computing the misses in parallel in a pool of ``spawn`` worker processes,
each limited to one BLAS/OpenMP/OpenCV thread so ``n_jobs`` workers share the cores instead of
oversubscribing them. The misses' computation shows a progress bar on the terminal (nothing
without a TTY, never in a notebook: :mod:`osteo_tf._progress`). The image functions themselves
live in :mod:`osteo_tf.preprocessing`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import tempfile
import warnings
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from osteo_tf import config
from osteo_tf._progress import progress
from osteo_tf.preprocessing import STEPS, _as_image, apply_steps, step_version, validate_steps

__all__ = ["DiskCache", "cached_apply_steps", "map_cached"]


def _canonical_json(value: Any, where: str) -> str:
    def _default(obj: Any) -> Any:
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(
            f"{where} must be JSON-serializable (numbers, strings, lists, dicts) to form a cache "
            f"key. Received: a value of type {type(obj).__name__}"
        )

    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default, allow_nan=True)


class DiskCache:
    """Content-addressed store of preprocessed images as ``.npy`` files.

    The key is the SHA-256 of the input image (bytes, shape, dtype), the step name, the
    parameters as sorted JSON and the step's version (its code version plus the versions of
    the libraries computing it), so a changed image, parameter or library never reads a stale
    result. Files live at ``root/<key[:2]>/<key>.npy`` and are written to a temporary file and
    moved into place with ``os.replace``, so a crash never leaves a partial entry under a
    final name; an unreadable entry is treated as a miss, and recomputed.

    Args:
        root: cache folder; default ``config.cache_dir() / "preprocessing"``.

    Attributes:
        root: the folder.
        hits: entries served from disk since construction.
        misses: lookups that found no readable entry.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else config.cache_dir() / "preprocessing"
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"DiskCache(root={str(self.root)!r}, hits={self.hits}, misses={self.misses})"

    @staticmethod
    def key(image: np.ndarray, name: str, params: Mapping[str, Any], version: str) -> str:
        """Return the hex SHA-256 key of ``image`` processed by step ``name`` with ``params``.

        Args:
            image: the input array (any shape/dtype; its exact bytes are hashed).
            name: step name (or ``"apply_steps"`` for a whole step list).
            params: JSON-serializable parameters; key order does not matter.
            version: the step's version string.
        """
        arr = np.ascontiguousarray(image)
        h = hashlib.sha256()
        # the namespace tag predates this module: kept, so existing cache entries stay valid
        for part in (b"osteo_tf.preprocessing/1", name.encode(), version.encode(),
                     _canonical_json(params, "params").encode(), arr.dtype.str.encode(),
                     repr(tuple(arr.shape)).encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        h.update(arr.tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """Return the stored array, or ``None`` when missing or unreadable (counted as a miss)."""
        p = self.path(key)
        try:
            with open(p, "rb") as fh:
                arr = np.load(fh, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, EOFError) as exc:
            warnings.warn(f"Ignoring unreadable cache entry {p} ({exc}); it will be recomputed.",
                          UserWarning, stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, key: str, array: np.ndarray) -> Path:
        """Store ``array`` under ``key`` atomically (temporary file + ``os.replace``)."""
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(array), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return p


_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _init_worker() -> None:
    """Worker initializer: one thread per process (n_jobs processes share the cores)."""
    for var in _THREAD_ENV:
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    cv2.setNumThreads(1)


def _run_task(task: tuple[str, Any, np.ndarray, Any]) -> np.ndarray:
    """Compute one task in a worker: ``("step", name, image, params)`` or ``("steps", ...)``."""
    kind, name, image, params = task
    if kind == "steps":
        return apply_steps(image, params)
    return STEPS[name](image, **params)


def _load_input(item: Any, index: int, skipped: list[str]) -> np.ndarray | None:
    """An input array converted by the preprocessing input rule, or a loaded file (``None`` if unreadable)."""
    if isinstance(item, np.ndarray):
        return _as_image(item, f"images_or_paths[{index}]")
    if isinstance(item, (str, os.PathLike)):
        from osteo_tf import io as osteo_io  # imported lazily: io pulls in pydicom and PIL

        try:
            loaded = osteo_io.load_xray(item)
        except getattr(osteo_io, "ImageLoadError", OSError) as exc:
            skipped.append(str(exc))
            return None
        return _as_image(loaded, f"load_xray({str(item)!r})")
    raise TypeError(
        f"images_or_paths[{index}] must be an (H, W) array or a file path. "
        f"Received: {type(item).__name__}"
    )


def _resolve_cache(cache: DiskCache | bool) -> DiskCache | None:
    if cache is True:
        return DiskCache()
    if cache is False or cache is None:
        return None
    if isinstance(cache, DiskCache):
        return cache
    raise TypeError(f"cache must be a DiskCache, True (default cache) or False (no cache). Received: cache={cache!r}")


def _resolve_n_jobs(n_jobs: int | None) -> int:
    if n_jobs is None:
        return os.cpu_count() or 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer or None. Received: n_jobs={n_jobs!r}")
    return int(n_jobs)


def _map(kind: str, name: str, version: str, params: Any, items: Sequence[Any], *,
         cache: DiskCache | bool, n_jobs: int | None, backend: str) -> list[np.ndarray | None]:
    if backend not in ("processes", "serial"):
        raise ValueError(f"backend must be 'processes' or 'serial'. Received: backend={backend!r}")
    if isinstance(items, (str, os.PathLike, np.ndarray)):
        raise TypeError("images_or_paths must be a sequence of images or paths, not a single one. "
                        f"Received: {type(items).__name__}")
    store = _resolve_cache(cache)
    jobs = _resolve_n_jobs(n_jobs)
    key_params = {"params": params} if kind == "step" else {"steps": params}
    _canonical_json(key_params, "params")  # fail fast on unhashable parameters

    results: list[np.ndarray | None] = [None] * len(items)
    todo: list[tuple[int, np.ndarray, str | None]] = []
    skipped: list[str] = []
    for i, item in enumerate(items):
        image = _load_input(item, i, skipped)
        if image is None:
            continue
        key = store.key(image, name, key_params, version) if store is not None else None
        hit = store.get(key) if store is not None else None
        if hit is not None:
            results[i] = hit
        else:
            todo.append((i, image, key))

    def _store(i: int, key: str | None, out: np.ndarray) -> None:
        results[i] = out
        if store is not None and key is not None:
            store.put(key, out)

    cached = sum(r is not None for r in results)
    label = f"{name} ({cached} cached)" if cached else name
    if backend == "serial" or jobs == 1 or len(todo) <= 1:
        for i, image, key in progress(todo, desc=label, unit="image"):
            _store(i, key, _run_task((kind, name, image, params)))
    else:
        ctx = multiprocessing.get_context("spawn")  # never fork: TensorFlow may be loaded
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_init_worker
        ) as pool:
            futures = {pool.submit(_run_task, (kind, name, image, params)): (i, key)
                       for i, image, key in todo}
            try:
                for fut in progress(concurrent.futures.as_completed(futures), total=len(futures), desc=label,
                                    unit="image"):
                    i, key = futures[fut]
                    _store(i, key, fut.result())
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    "A preprocessing worker process died. Workers are started with 'spawn', which "
                    "re-imports the main script: guard a script's top-level code with "
                    "`if __name__ == '__main__':`, or pass n_jobs=1 (results already computed "
                    "are in the cache)."
                ) from exc
    if skipped:
        shown = "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"Skipped {len(skipped)} of {len(items)} files that could not be loaded (their "
            f"results are None): {shown}",
            UserWarning,
            stacklevel=3,
        )
    return results


def map_cached(fn_name: str, images_or_paths: Sequence[np.ndarray | str | os.PathLike[str]],
               params: Mapping[str, Any] | None = None, *, cache: DiskCache | bool = True,
               n_jobs: int | None = None, backend: str = "processes") -> list[np.ndarray | None]:
    """Apply one :data:`STEPS` function to many images, in parallel, through the disk cache.

    Inputs are loaded and hashed in this process; cache hits never reach the pool. Misses run
    in a ``ProcessPoolExecutor`` using the ``spawn`` start method (forking after TensorFlow
    was imported is unsafe) with one BLAS/OpenMP/OpenCV thread per worker, and are written
    to the cache as they finish. With ``n_jobs=1``, ``backend="serial"`` or a single miss
    the work runs in this process. As with any ``spawn`` pool, a calling *script* must keep
    its top-level code under ``if __name__ == "__main__":`` (notebooks and pytest need
    nothing).

    Args:
        fn_name: a key of :data:`STEPS`, e.g. ``"bm3d_denoise"``.
        images_or_paths: (H, W) float32 [0, 1] arrays (uint8/uint16 converted by the module
            rule) and/or file paths, loaded with ``osteo_tf.io.load_xray``.
        params: keyword options of the step (JSON-serializable); ``None`` = defaults.
        cache: a :class:`DiskCache`, ``True`` for the default one, ``False`` for none.
        n_jobs: worker processes; ``None`` = ``os.cpu_count()``.
        backend: ``"processes"`` or ``"serial"``.

    Returns:
        The outputs, float32, in input order; ``None`` for a file that ``load_xray`` could
        not read (``io.ImageLoadError``), with one ``UserWarning`` counting the skipped files:
        one bad file never stops a run.

    Raises:
        ValueError: unknown ``fn_name``, bad ``n_jobs``/``backend``, or an invalid input array.
        TypeError: parameters that are not JSON-serializable, or an input that is neither an
            array nor a path.
        RuntimeError: a worker process died (see the ``__main__`` note above).
    """
    if fn_name not in STEPS:
        raise ValueError(f"Unknown step. Expected one of {sorted(STEPS)}. Received: fn_name={fn_name!r}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of keyword options. Received: params={params!r}")
    return _map("step", fn_name, step_version(fn_name), dict(params), images_or_paths,
                cache=cache, n_jobs=n_jobs, backend=backend)


def cached_apply_steps(paths: Sequence[np.ndarray | str | os.PathLike[str]],
                       steps: Sequence[tuple[str, Mapping[str, Any]]], *,
                       cache: DiskCache | bool = True, n_jobs: int | None = None,
                       backend: str = "processes") -> list[np.ndarray | None]:
    """Run a whole step list (:func:`apply_steps`) per image, cached as ONE entry per image.

    Used to precompute the deterministic preprocessing of a manifest before training. The key
    covers the full step list (names, parameters, versions) and the input image.

    Args:
        paths: file paths (loaded with ``osteo_tf.io.load_xray``) and/or (H, W) arrays.
        steps: ``[(step_name, params), ...]`` as for :func:`apply_steps`.
        cache: a :class:`DiskCache`, ``True`` for the default one, ``False`` for none.
        n_jobs: worker processes; ``None`` = ``os.cpu_count()``.
        backend: ``"processes"`` or ``"serial"``.

    Returns:
        The preprocessed float32 images, in input order; ``None`` for unreadable files
        (warned, as in :func:`map_cached`).

    Raises:
        ValueError: an unknown step or malformed step list (plus the errors of :func:`map_cached`).
    """
    checked = validate_steps(steps)
    version = "|".join(f"{n}:{step_version(n)}" for n, _ in checked)
    return _map("steps", "apply_steps", version, [[n, p] for n, p in checked], paths,
                cache=cache, n_jobs=n_jobs, backend=backend)
