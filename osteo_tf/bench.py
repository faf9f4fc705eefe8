"""Runner of the performance benchmarks in ``benchmarks/`` (``osteo-tf bench``).

Each ``benchmarks/bench_*.py`` module defines ``BENCHMARKS``: a dict name -> zero-argument
callable returning a record ``{"baseline", "ours", "unit", "ratio", "target", ...}`` where
``ratio`` is how many times better ours is than the baseline measured in the same run (higher is
better) and ``target`` the ratio the project promises. Benchmarks are never timed assertions in
tests: they are run on demand and their ratios reported.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from osteo_tf.config import PROJECT_ROOT

BENCH_DIR = PROJECT_ROOT / "benchmarks"
REQUIRED_KEYS = ("name", "baseline", "ours", "unit", "ratio", "target")


def discover(bench_dir: Path = BENCH_DIR) -> dict[str, Callable[[], dict]]:
    """Collect ``BENCHMARKS`` from every ``bench_*.py`` file, in file then definition order."""
    found: dict[str, Callable[[], dict]] = {}
    if str(bench_dir) not in sys.path:  # benchmarks share helpers (benchmarks/_data.py)
        sys.path.insert(0, str(bench_dir))
    for path in sorted(Path(bench_dir).glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"osteo_tf_bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, fn in getattr(module, "BENCHMARKS", {}).items():
            if name in found:
                raise ValueError(f"benchmark {name!r} is defined twice (second time in {path})")
            found[name] = fn
    return found


def run(only: Sequence[str] | None = None, *, bench_dir: Path = BENCH_DIR, echo=print) -> list[dict]:
    """Run the benchmarks (all, or those named in ``only``) and return their records.

    Raises:
        ValueError: when ``only`` names an unknown benchmark.
    """
    available = discover(bench_dir)
    names = list(available) if not only else list(only)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}. Available: {list(available)}")
    records = []
    for name in names:
        t0 = time.perf_counter()
        rec = dict(available[name]())
        rec["name"] = name
        rec["wall_seconds"] = round(time.perf_counter() - t0, 2)
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            raise ValueError(f"benchmark {name!r} returned a record without {missing}")
        rec["meets_target"] = bool(rec["ratio"] >= rec["target"])
        echo(format_record(rec))
        records.append(rec)
    return records


def format_record(rec: dict) -> str:
    """One line: name, baseline, ours, ratio vs target."""
    verdict = "OK " if rec["ratio"] >= rec["target"] else "LOW"
    return (
        f"[{verdict}] {rec['name']:<24} baseline {rec['baseline']:.4g} {rec['unit']}  "
        f"ours {rec['ours']:.4g} {rec['unit']}  ratio {rec['ratio']:.2f}x (target {rec['target']}x)"
    )


def write_json(records: list[dict], path) -> None:
    """Write the records as the JSON list of the CLI contract."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(records, indent=2) + "\n")


def timed(fn: Callable[[], object]) -> float:
    """Seconds taken by one call of ``fn`` (wall clock, perf_counter)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
